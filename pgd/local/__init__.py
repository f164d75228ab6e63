"""What one rank computes on its own rows, without MPI: pointwise losses (:mod:`.losses`), the linear model's
one-pass local gradient (:mod:`.linear`) and the power iteration (:mod:`.power`).
"""
