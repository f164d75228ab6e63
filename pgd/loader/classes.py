"""The classes of a multinomial run: their number K, the label check and class weights, agreed over the ranks.

Labels are the integers ``0 .. K-1`` (``pgd data convert --labels classes`` maps other values and records
the mapping).  K is ``--classes`` when given, else the largest label over all ranks plus one.  Every check
is combined over the communicator, so all ranks raise the same one-line error.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from pgd.errors import InputError


def parse_multiclass_weight(text: str | None, n_classes: int):
    """``--class-weight`` for K classes: None, ``"balanced"``, or K factors from ``"W0,...,W(K-1)"``."""
    if text is None or text in ("", "none"):
        return None
    if text == "balanced":
        return "balanced"
    try:
        values = np.array([float(part) for part in str(text).split(",")])
    except ValueError:
        values = np.zeros(0)
    if len(values) != n_classes or not np.all(np.isfinite(values) & (values >= 0)) or not values.any():
        raise InputError(f"--class-weight must be 'balanced' or {n_classes} finite non-negative weights "
                         f"W0,...,W{n_classes - 1} for {n_classes} classes, got {text!r}", collective=True)
    return values


def count_classes(mpi_comm, y: np.ndarray, start: int, n: int, path: str, requested: int | None,
                  source: str = "--classes") -> int:
    """K for labels ``y`` (this rank's host labels, global rows from ``start``), checked collectively: every
    label an integer in ``0 .. K-1`` and K at least 2; ``source`` names where a ``requested`` K comes from."""
    top = np.array([float(y.max()) if len(y) else -1.0])
    mpi_comm.Allreduce(MPI.IN_PLACE, top, op=MPI.MAX)
    n_classes = int(requested) if requested else int(top[0]) + 1 if np.isfinite(top[0]) else 0
    bad = (y != np.floor(y)) | (y < 0) | (y >= max(n_classes, 1))
    found = np.array([int(np.count_nonzero(bad)), -(start + int(np.argmax(bad)) if bad.any() else n)],
                     dtype=np.int64)
    mpi_comm.Allreduce(MPI.IN_PLACE, found[:1], op=MPI.SUM)
    mpi_comm.Allreduce(MPI.IN_PLACE, found[1:], op=MPI.MAX)
    if found[0]:
        limit = f"0 .. {n_classes - 1} ({source} {n_classes})" if requested else "integers 0 .. K-1"
        raise InputError(f"{path}: {int(found[0])} labels are not {limit} as multinomial loss needs; first in row "
                         f"{int(-found[1])} (map other labels with `pgd data convert ... --labels classes`)",
                         collective=True)
    if not requested and n_classes > n:
        raise InputError(f"{path}: the largest label is {n_classes - 1} but there are only {n} rows; map the labels "
                         f"to 0 .. K-1 (`pgd data convert ... --labels classes`) or pass --classes", collective=True)
    if n_classes < 2:
        raise InputError(f"{path}: multinomial loss needs at least 2 classes, the labels hold {n_classes}",
                         collective=True)
    return n_classes


def class_factors(mpi_comm, y: np.ndarray, weight, spec, n_classes: int) -> np.ndarray:
    """Per-class row factors: ``W / (K' W_c)`` for ``"balanced"`` (``W_c`` the sample-weighted total of class
    c, ``K'`` the classes present; absent classes get 0), else the given factors."""
    if not isinstance(spec, str):
        return np.asarray(spec, dtype=np.float64)
    base = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
    totals = np.bincount(y.astype(np.int64), weights=base, minlength=n_classes).astype(np.float64)
    mpi_comm.Allreduce(MPI.IN_PLACE, totals, op=MPI.SUM)
    present = totals > 0
    return np.where(present, totals.sum() / (present.sum() * np.where(present, totals, 1.0)), 0.0)


def prepare_classes(mpi_comm, slab, backend, *, requested: int | None, class_weight: str | None,
                    source: str = "--classes") -> int:
    """Check ``slab``'s labels, apply ``--class-weight`` to its weights (in place: ``weight``,
    ``total_weight``, ``weight_source``) and return K.  ``slab`` was loaded without class weights."""
    y = np.asarray(backend.to_host(slab.y), dtype=np.float64)
    n_classes = count_classes(mpi_comm, y, slab.start, slab.meta.n, slab.meta.path, requested, source)
    spec = parse_multiclass_weight(class_weight, n_classes)
    if spec is None:
        return n_classes
    file_weight = None if slab.weight is None else np.asarray(backend.to_host(slab.weight), dtype=np.float64)
    factors = class_factors(mpi_comm, y, file_weight, spec, n_classes)
    per_row = factors[y.astype(np.int64)]
    weight = per_row if file_weight is None else file_weight * per_row
    total = np.array([float(weight.sum())])
    mpi_comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
    if not total[0] > 0:
        raise InputError(f"{slab.meta.path}: the class weights give every row weight zero; nothing to fit",
                         collective=True)
    slab.weight = backend.to_device(np.ascontiguousarray(weight, dtype=slab.dtype))
    slab.total_weight = float(total[0])
    shown = ", ".join(f"{factor:.6g}" for factor in factors[:10]) + (", ..." if n_classes > 10 else "")
    source = f"--class-weight {class_weight} ({shown} for classes 0..{n_classes - 1})"
    slab.weight_source = source if slab.weight_source == "none" else f"{slab.weight_source} x {source}"
    return n_classes
