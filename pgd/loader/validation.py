"""Validation rows of a run: a held-out share of the training file (``--validation-fraction``) or a file of their
own (``--validation``), each rank holding its part, on the same device as its training rows.

The held-out selection is :func:`pgd.data.holdout.holdout_mask` of the *global* row index, so it does not depend on
the rank count; the held-out rows are taken out of the training slab on every rank (its rows are renumbered
``0 .. n_train - 1`` in file order, so mini-batch plans over the training rows are rank-count independent too).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse
from mpi4py import MPI

from pgd.data.holdout import holdout_mask
from pgd.errors import InputError
from pgd.loader.classes import prepare_classes
from pgd.loader.host import load_row_slab


@dataclasses.dataclass
class ValidationRows:
    """This rank's validation rows (``X``, ``y``, optional ``weight`` on the backend's device), their global count
    and where they come from."""

    X: object
    y: object
    weight: object
    n_global: int
    source: str


def _rows(backend, array, index):
    """``array[index]`` as a new contiguous array on the device (``index``: host integer array)."""
    if array is None:
        return None
    return backend.xp.ascontiguousarray(array[backend.xp.asarray(index)])


def split_holdout(world, slab, fraction: float, seed: int, backend):
    """Take the held-out rows out of ``slab`` (collective); returns ``(training slab, ValidationRows)``.

    The training slab's ``start, stop`` number the training rows ``0 .. n_train - 1`` over all ranks in file order,
    its ``meta.n`` is ``n_train`` and its ``total_weight`` the training rows' Σs.
    """
    held = holdout_mask(slab.start, slab.stop, fraction, seed)
    kept, taken = np.flatnonzero(~held), np.flatnonzero(held)
    local = np.array([len(kept), len(taken), 0.0, 0.0])
    if slab.weight is not None:
        weight = np.asarray(backend.to_host(slab.weight), dtype=np.float64)
        local[2:] = weight[kept].sum(), weight[taken].sum()
    totals = np.empty_like(local)
    world.Allreduce(local, totals, op=MPI.SUM)
    n_train, n_valid = int(totals[0]), int(totals[1])
    if n_train == 0 or n_valid == 0:
        raise InputError(f"--validation-fraction {fraction:g} of {slab.meta.n} rows leaves {n_valid} validation and "
                         f"{n_train} training rows; both need at least one", collective=True)
    offset = world.exscan(len(kept), op=MPI.SUM)   # training rows on the ranks before this one (start-up only)
    offset = int(offset) if world.Get_rank() else 0
    validation = ValidationRows(_rows(backend, slab.X, taken), _rows(backend, slab.y, taken),
                                _rows(backend, slab.weight, taken), n_valid,
                                f"--validation-fraction {fraction:g} of {slab.meta.path} (seed {seed})")
    training = dataclasses.replace(slab, meta=dataclasses.replace(slab.meta, n=n_train), start=offset,
                                   stop=offset + len(kept), X=_rows(backend, slab.X, kept),
                                   y=_rows(backend, slab.y, kept), weight=_rows(backend, slab.weight, kept),
                                   total_weight=float(totals[2]) if slab.weight is not None else float(n_train))
    if hasattr(slab, "n_classes"):   # set by prepare_classes on a multinomial run's slab
        training.n_classes = slab.n_classes
    return training, validation


def load_validation_file(world, cfg, backend, slab) -> ValidationRows:
    """``--validation FILE``: its rows split over the ranks like the training file's, with the training
    file's dtype, keys and weights (``/sample_weight``, ``--class-weight``)."""
    multinomial = cfg.loss == "multinomial"
    rows = load_row_slab(world, cfg.validation, backend=backend, dtype=str(slab.dtype), x_key=cfg.x_key,
                         y_key=cfg.y_key, locking=cfg.hdf5_locking, loss=cfg.loss, weight_key=cfg.weight_key,
                         class_weight=None if multinomial else cfg.class_weight)
    if scipy.sparse.issparse(rows.X):
        raise InputError(f"--validation {cfg.validation} is sparse (CSR): validation rows must be dense for now "
                         f"(pgd data convert {cfg.validation} DENSE.h5 --from h5 --to dense)", collective=True)
    if rows.meta.d != slab.meta.d:
        raise InputError(f"--validation {cfg.validation} has {rows.meta.d} columns but the training data has "
                         f"{slab.meta.d}", collective=True)
    if multinomial:
        prepare_classes(world, rows, backend, requested=slab.n_classes, class_weight=cfg.class_weight,
                        source="the training data's classes:")
    return ValidationRows(rows.X, rows.y, rows.weight, rows.n_global, f"--validation {cfg.validation}")


def validation_rows(world, cfg, backend, slab):
    """``(training slab, ValidationRows or None)`` for ``--validation`` / ``--validation-fraction``."""
    if cfg.validation:
        return slab, load_validation_file(world, cfg, backend, slab)
    if cfg.validation_fraction:
        return split_holdout(world, slab, cfg.validation_fraction, cfg.seed, backend)
    return slab, None
