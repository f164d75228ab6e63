"""Run under mpirun: distributed metrics on uneven slices must equal the serial values.

Every rank builds the same data (fixed seed), takes an uneven slice (the last rank gets no rows when
there are 2 or more ranks) and compares with the serial result on ``MPI.COMM_SELF``.  Exits 1 on a
mismatch, on every rank.
"""

import math
import sys

import numpy as np
from mpi4py import MPI

from pgd.evaluation.metrics import classification_metrics, distributed_roc_auc, regression_metrics


def uneven_bounds(n, size):
    """Slice boundaries with growing sizes and an empty last slice (for size >= 2)."""
    if size == 1:
        return [0, n]
    weights = np.arange(1, size, dtype=float)
    cuts = np.round(np.cumsum(weights) / weights.sum() * n).astype(int)
    return [0, *cuts.tolist(), n]


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def main():
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(42)
    n = 301
    scores = np.round(rng.standard_normal(n), 1)  # many ties
    labels = (rng.random(n) < 0.35).astype(np.float32)
    targets = rng.standard_normal(n)
    bounds = uneven_bounds(n, size)
    part = slice(bounds[rank], bounds[rank + 1])

    failures = []
    checks = {
        "auc": (distributed_roc_auc(scores[part], labels[part], comm),
                distributed_roc_auc(scores, labels, MPI.COMM_SELF)),
        "auc_one_class": (distributed_roc_auc(scores[part], np.zeros(n)[part], comm), math.nan),
    }
    distributed = classification_metrics(labels[part], scores[part], comm)
    serial = classification_metrics(labels, scores, MPI.COMM_SELF)
    checks.update({f"classification.{k}": (distributed[k], serial[k]) for k in serial})
    distributed = regression_metrics(targets[part], scores[part], comm)
    serial = regression_metrics(targets, scores, MPI.COMM_SELF)
    checks.update({f"regression.{k}": (distributed[k], serial[k]) for k in serial})
    for key, (got, want) in checks.items():
        if not same(got, want):
            failures.append(f"rank {rank}/{size}: {key}: distributed {got!r} != serial {want!r}")
    all_ok = comm.allreduce(not failures, op=MPI.LAND)
    for line in failures:
        print(line, flush=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
