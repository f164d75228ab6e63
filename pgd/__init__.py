"""pgd: parallel gradient descent for least-squares, logistic and multinomial models over MPI.

``pgd.load_model(path)`` reads a model file into a :class:`pgd.evaluation.linear_model.LinearModel` (``coef_``,
``intercept_``, ``classes_``, ``predict``, ``predict_proba``, ``decision_function``); it is loaded on first use,
so ``import pgd`` and ``pgd --help`` stay fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def __getattr__(name: str):
    if name == "load_model":
        from pgd.evaluation.linear_model import load_model  # noqa: PLC0415 - on first use: `pgd --help` stays fast

        return load_model
    raise AttributeError(f"module 'pgd' has no attribute {name!r}")
