"""pgd: parallel gradient descent for least-squares and logistic models over MPI."""

__version__ = "0.1.0"
