"""Load this rank's slab of a dataset, validated collectively so every rank stops together on bad input.

Every check that could fail on one rank only (a NaN in its rows, a bad label) is combined over the
communicator first, so all ranks raise the same one-line error and none is left in a collective.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from pgd.comm.host import collectively
from pgd.data import DatasetMeta, block_range, count_nonfinite, inspect_dataset, open_h5, read_rows, read_weights
from pgd.data.csr import CsrMeta, inspect_csr, is_csr_file
from pgd.data.csr_slab import rank_row_range, read_csr_slab
from pgd.errors import InputError
from pgd.loader.device import load_slab_to_device
from pgd.runtime.hostmem import available_bytes, check_fits_in_memory
from pgd.runtime.launcher import launcher_local_size

#: The sample-weight dataset read when present (``--weight-key``).
DEFAULT_WEIGHT_KEY = "sample_weight"


@dataclass
class RowSlab:
    """Rows ``[start, stop)`` of a dataset held by this rank (``X``, ``y`` and the optional sample weights
    on the backend's device); ``total_weight`` is ``Σ s_i`` over the whole dataset (``n`` without weights)."""

    meta: DatasetMeta | CsrMeta
    start: int
    stop: int
    X: object
    y: object
    dtype: np.dtype
    weight: object = None
    total_weight: float = 0.0
    weight_source: str = "none"

    @property
    def n_local(self) -> int:
        """Rows held by this rank."""
        return self.stop - self.start

    @property
    def n_global(self) -> int:
        """Rows of the whole dataset."""
        return self.meta.n


def resolve_dtype(choice: str, meta: DatasetMeta) -> np.dtype:
    """The compute dtype for ``--dtype`` ``choice`` (``auto`` keeps a float32/float64 file's type)."""
    if choice != "auto":
        return np.dtype(choice)
    return meta.dtype if meta.dtype in (np.float32, np.float64) else np.dtype(np.float64)


def inspect_collectively(mpi_comm, path: str, *, x_key: str, y_key: str | None, locking: str,
                         require_y: bool = True) -> DatasetMeta:
    """:func:`pgd.data.inspect_dataset` on every rank, failing on all ranks together."""
    meta = None
    with collectively(mpi_comm):
        meta = inspect_dataset(path, x_key=x_key, y_key=y_key, require_y=require_y, locking=locking)
    return meta


def _first_bad_row(mpi_comm, count: int, local_row: int, start: int, n: int) -> tuple[int, int]:
    """Global count and first global row of a per-rank (count, first local row or -1) finding."""
    first = start + local_row if local_row >= 0 else n
    totals = np.array([count, -first], dtype=np.int64)
    mpi_comm.Allreduce(MPI.IN_PLACE, totals[:1], op=MPI.SUM)
    mpi_comm.Allreduce(MPI.IN_PLACE, totals[1:], op=MPI.MAX)
    return int(totals[0]), int(-totals[1])


def _validate_labels(mpi_comm, y: np.ndarray, start: int, meta: DatasetMeta) -> None:
    """Logistic labels must be 0 or 1; say how many are not, where, and how to convert ±1."""
    bad = (y != 0) & (y != 1)
    local_count = int(np.count_nonzero(bad))
    local_row = int(np.argmax(bad)) if local_count else -1
    has_minus_one = np.array([int(np.any(y == -1))], dtype=np.int64)
    count, row = _first_bad_row(mpi_comm, local_count, local_row, start, meta.n)
    if count:
        mpi_comm.Allreduce(MPI.IN_PLACE, has_minus_one, op=MPI.MAX)
        hint = (" (labels look like {-1,+1}: convert them with `pgd data convert ... --labels pm1`)"
                if has_minus_one[0] else "")
        raise InputError(f"{meta.path}: {count} labels are not 0 or 1 as logistic loss needs; first in row "
                         f"{row}{hint}", collective=True)


def parse_class_weight(text: str | None):
    """``--class-weight``: None, ``"balanced"`` (``W / (2 W_c)``, ``W_c`` the sample-weighted total of class
    ``c``, as scikit-learn), or ``(w0, w1)`` from ``"W0,W1"`` (InputError otherwise)."""
    if text is None or text in ("", "none"):
        return None
    if text == "balanced":
        return "balanced"
    try:
        values = tuple(float(part) for part in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or not all(np.isfinite(v) and v >= 0 for v in values) or not any(values):
        raise InputError(f"--class-weight must be 'balanced' or W0,W1 with finite non-negative weights, "
                         f"got {text!r}", collective=True)
    return values


def _weights(mpi_comm, meta: DatasetMeta, start: int, stop: int, dtype, y, *, weight_key, class_weight,
             locking: str, counts: bool):
    """This rank's sample weights (file weights times class weights; None when neither applies), validated
    collectively, and ``(Σ s_i over the dataset, a description)``.  Only ranks with ``counts`` contribute
    to global sums (one rank per row block in grid modes)."""
    weight = None
    with collectively(mpi_comm):
        weight = read_weights(meta.path, weight_key, meta.n, start, stop, dtype, locking=locking)
    has_file_weights = bool(mpi_comm.allreduce(int(weight is not None), op=MPI.MAX))
    sources = [f"/{weight_key}"] if has_file_weights else []
    if has_file_weights:
        bad = ~np.isfinite(weight) | (weight < 0) if counts else np.zeros(0, dtype=bool)
        count, row = _first_bad_row(mpi_comm, int(np.count_nonzero(bad)), int(np.argmax(bad)) if bad.any() else -1,
                                    start, meta.n)
        if count:
            raise InputError(f"{meta.path}: {count} sample weights in /{weight_key} are negative or not finite; "
                             f"first in row {row}", collective=True)
    spec = parse_class_weight(class_weight)
    if spec is not None:
        if spec == "balanced":   # W / (2 W_c) with W_c the (sample-weighted) class totals, as scikit-learn
            base = np.ones(len(y)) if weight is None else weight.astype(np.float64)
            local = np.array([base[y == 0].sum(), base[y == 1].sum()] if counts else [0.0, 0.0])
            mpi_comm.Allreduce(MPI.IN_PLACE, local, op=MPI.SUM)
            present = local > 0
            factors = np.where(present, local.sum() / (present.sum() * np.where(present, local, 1.0)), 0.0)
        else:
            factors = np.asarray(spec, dtype=np.float64)
        per_row = np.where(y == 1, factors[1], factors[0]).astype(dtype)
        weight = per_row if weight is None else weight * per_row
        sources.append(f"--class-weight {class_weight} ({factors[0]:.6g} for 0, {factors[1]:.6g} for 1)")
    if weight is None:
        return None, float(meta.n), "none"
    total = np.array([float(weight.sum(dtype=np.float64)) if counts else 0.0])
    mpi_comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
    if not total[0] > 0:
        raise InputError(f"{meta.path}: the sample weights sum to zero; nothing to fit", collective=True)
    return np.ascontiguousarray(weight, dtype=dtype), float(total[0]), " x ".join(sources)


def _check_values(mpi_comm, meta: DatasetMeta, start: int, nonfinite: tuple[int, int], labels,
                  loss: str | None) -> None:
    """Collective checks of loaded rows: no NaN/Inf (their count and first row), and logistic labels in
    {0, 1}. ``nonfinite`` is this rank's ``(count, first local row or -1)``; ``labels`` its host labels (an
    empty array on ranks that do not own them, None without labels)."""
    count, row = _first_bad_row(mpi_comm, *nonfinite, start, meta.n)
    if count:
        raise InputError(f"{meta.path}: {count} non-finite values (NaN or Inf) in the data; first in row "
                         f"{row}", collective=True)
    if loss == "logistic" and labels is not None:
        _validate_labels(mpi_comm, labels, start, meta)


def load_row_slab(mpi_comm, path: str, *, backend, dtype: str = "auto", x_key: str = "X",
                  y_key: str | None = "y", locking: str = "best-effort", loss: str | None = None,
                  require_y: bool = True, weight_key: str | None = None,
                  class_weight: str | None = None) -> RowSlab:
    """Read, validate and place on the device this rank's contiguous block of rows.

    Parameters
    ----------
    mpi_comm : mpi4py.MPI.Comm
        Ranks that split the rows between them (block partition, :func:`pgd.data.block_range`).
    loss : str, optional
        ``"logistic"`` also checks that every label is 0 or 1.
    weight_key : str, optional
        Sample weights read from this dataset when the file has it.
    class_weight : str, optional
        ``"balanced"`` or ``"W0,W1"``: row weights by label (logistic loss).
    """
    if sparse_collectively(mpi_comm, path, x_key=x_key, locking=locking):
        if backend.is_gpu:
            raise InputError(f"{path} is sparse (CSR): it trains and predicts on the CPU for now; pass "
                             f"--device cpu", collective=True)
        return load_csr_row_slab(mpi_comm, path, dtype=dtype, x_key=x_key, y_key=y_key, locking=locking,
                                 loss=loss, require_y=require_y, weight_key=weight_key, class_weight=class_weight)
    meta = inspect_collectively(mpi_comm, path, x_key=x_key, y_key=y_key, locking=locking,
                                require_y=require_y)
    compute_dtype = resolve_dtype(dtype, meta)
    start, stop = block_range(meta.n, mpi_comm.Get_size(), mpi_comm.Get_rank())
    if backend.is_gpu:  # blocks through pinned host buffers straight to the device (pgd.loader.device)
        return _load_to_gpu(mpi_comm, meta, start, stop, compute_dtype, backend=backend, locking=locking,
                            loss=loss, weight_key=weight_key, class_weight=class_weight)
    return load_block(mpi_comm, path, rows=(start, stop), cols=None, backend=backend, dtype=dtype,
                      locking=locking, loss=loss, meta=meta, weight_key=weight_key,
                      class_weight=class_weight)


def load_row_slab_on(world, holds_data: bool, path: str, *, backend, **options) -> RowSlab:
    """:func:`load_row_slab` over the ranks of ``world`` with ``holds_data`` (a block partition over them);
    the others (the asynchronous modes' servers) get an empty slab with the same facts.

    Errors are agreed over ``world``, so a rank without data never waits on ranks that failed.  When every
    rank holds data this is :func:`load_row_slab` over ``world``.
    """
    if world.allreduce(bool(holds_data), op=MPI.LAND):
        return load_row_slab(world, path, backend=backend, **options)
    rank = world.Get_rank()
    data_comm = world.Split(0 if holds_data else 1, rank)
    slab = None
    with collectively(world):
        try:
            if holds_data:
                slab = load_row_slab(data_comm, path, backend=backend, **options)
        finally:
            data_comm.Free()
    root = world.allgather(bool(holds_data)).index(True)
    meta, dtype, total, source = world.bcast(
        (slab.meta, str(slab.dtype), slab.total_weight, slab.weight_source) if rank == root else None, root=root)
    if slab is not None:
        return slab
    xp, dtype = backend.xp, np.dtype(dtype)
    if getattr(meta, "sparse", False):
        import scipy.sparse  # noqa: PLC0415 - SciPy only for a sparse file

        empty = scipy.sparse.csr_matrix((0, meta.d), dtype=dtype)
    else:
        empty = xp.zeros((0, meta.d), dtype=dtype)
    weight = None if source == "none" else xp.zeros(0, dtype=dtype)
    return RowSlab(meta=meta, start=0, stop=0, X=empty, y=xp.zeros(0, dtype=dtype), dtype=dtype, weight=weight,
                   total_weight=total, weight_source=source)


def sparse_collectively(mpi_comm, path: str, *, x_key: str, locking: str) -> bool:
    """Whether ``/x_key`` of ``path`` is a CSR group (the same answer on every rank; a file that cannot be
    opened answers False here and fails in the dense inspection with its one-line error)."""
    sparse = False
    if mpi_comm.Get_rank() == 0:
        try:
            sparse = is_csr_file(path, x_key, locking)
        except (InputError, OSError):
            sparse = False
    return bool(mpi_comm.bcast(sparse, root=0))


def _csr_nonfinite(data: np.ndarray, indptr: np.ndarray, y) -> tuple[int, int]:
    """``(count, first local row or -1)`` of NaN/Inf among the stored values and the labels."""
    bad = ~np.isfinite(data)
    count = int(np.count_nonzero(bad))
    firsts = [int(np.searchsorted(indptr, int(np.argmax(bad)), side="right")) - 1] if count else []
    if y is not None:
        bad_y = ~np.isfinite(y)
        if bad_y.any():
            count += int(np.count_nonzero(bad_y))
            firsts.append(int(np.argmax(bad_y)))
    return count, min(firsts, default=-1)


def load_csr_row_slab(mpi_comm, path: str, *, dtype: str = "auto", x_key: str = "X", y_key: str | None = "y",
                      locking: str = "best-effort", loss: str | None = None, require_y: bool = True,
                      weight_key: str | None = None, class_weight: str | None = None) -> RowSlab:
    """This rank's rows of a sparse (CSR) file: a contiguous row range with balanced non-zeros (found by
    bisection on the stored indptr, never reading all of it), validated collectively like dense rows.

    ``X`` of the returned slab is a ``scipy.sparse.csr_matrix`` on the host sharing the read arrays (values
    in the compute dtype, indices as stored); a rank with no rows gets a ``0 x d`` matrix and joins every
    collective.
    """
    meta = None
    with collectively(mpi_comm):
        meta = inspect_csr(path, x_key=x_key, y_key=y_key, require_y=require_y, locking=locking)
    compute_dtype = resolve_dtype(dtype, meta)
    part = None
    with collectively(mpi_comm):
        start, stop = rank_row_range(meta, mpi_comm.Get_size(), mpi_comm.Get_rank(), locking)
        with open_h5(path, locking) as h5:   # two elements of indptr: this rank's non-zeros
            nnz = int(h5[meta.x_key]["indptr"][stop]) - int(h5[meta.x_key]["indptr"][start])
        check_fits_in_memory(rank=mpi_comm.Get_rank(), rows=stop - start, d=meta.d, dtype=compute_dtype,
                             available=available_bytes(), ranks_here=launcher_local_size(),
                             ranks=mpi_comm.Get_size(), nnz=nnz, index_itemsize=meta.index_dtype.itemsize)
        part = read_csr_slab(meta, start, stop, compute_dtype, weight_key=None, locking=locking)
    labels = part.y
    _check_values(mpi_comm, meta, part.start, _csr_nonfinite(part.data, part.indptr, labels), labels, loss)
    weight, total, source = None, float(meta.n), "none"
    if labels is not None:
        weight, total, source = _weights(mpi_comm, meta, part.start, part.stop, compute_dtype, labels,
                                         weight_key=weight_key, class_weight=class_weight, locking=locking,
                                         counts=True)
    return RowSlab(meta=meta, start=part.start, stop=part.stop, X=part.to_scipy(), y=labels,
                   dtype=compute_dtype, weight=weight, total_weight=total, weight_source=source)


def _load_to_gpu(mpi_comm, meta, start, stop, dtype, *, backend, locking, loss, weight_key,
                 class_weight) -> RowSlab:
    """The GPU branch of :func:`load_row_slab`: same checks, X never held whole on the host."""

    X, y_host, y, nonfinite = load_slab_to_device(mpi_comm, meta, start, stop, dtype, backend=backend,
                                                  locking=locking)
    _check_values(mpi_comm, meta, start, nonfinite, y_host, loss)
    weight, total, source = _weights(mpi_comm, meta, start, stop, dtype, y_host, weight_key=weight_key,
                                     class_weight=class_weight, locking=locking, counts=True)
    return RowSlab(meta=meta, start=start, stop=stop, X=X, y=y, dtype=dtype,
                   weight=None if weight is None else backend.to_device(weight), total_weight=total,
                   weight_source=source)


@dataclass
class BlockSlab(RowSlab):
    """Rows ``[start, stop)`` and columns ``[col_start, col_stop)`` of a dataset held by this rank."""

    col_start: int = 0
    col_stop: int = 0

    @property
    def d_local(self) -> int:
        """Columns held by this rank."""
        return self.col_stop - self.col_start


def load_block(mpi_comm, path: str, *, rows: tuple[int, int] | None, cols: tuple[int, int] | None,
               backend, dtype: str = "auto", x_key: str = "X", y_key: str | None = "y",
               locking: str = "best-effort", loss: str | None = None, meta: DatasetMeta | None = None,
               weight_key: str | None = None, class_weight: str | None = None) -> BlockSlab:
    """Read, validate and place on the device one (row range × column range) block of X and its y rows.

    Parameters
    ----------
    mpi_comm : mpi4py.MPI.Comm
        All ranks that read blocks of the file (errors are agreed over it).
    rows, cols : tuple of int, or None
        Global ``(start, stop)`` ranges; None means all rows / all columns.
    meta : DatasetMeta, optional
        From an earlier :func:`inspect_collectively` (inspected here otherwise).
    weight_key, class_weight : str, optional
        See :func:`load_row_slab`.

    Notes
    -----
    Labels and weights are counted only by the ranks holding column 0, so counts of bad values and the
    total weight are not repeated once per column block.
    """
    if meta is None:
        meta = inspect_collectively(mpi_comm, path, x_key=x_key, y_key=y_key, locking=locking)
    compute_dtype = resolve_dtype(dtype, meta)
    start, stop = rows if rows is not None else (0, meta.n)
    col_start, col_stop = cols if cols is not None else (0, meta.d)
    X = y = None
    with collectively(mpi_comm):
        check_fits_in_memory(rank=mpi_comm.Get_rank(), rows=stop - start, d=col_stop - col_start,
                             dtype=compute_dtype, available=available_bytes(), ranks_here=launcher_local_size(),
                             ranks=mpi_comm.Get_size())
        X, y = read_rows(meta, start, stop, compute_dtype, locking=locking, cols=(col_start, col_stop))
    labels = y if y is None or col_start == 0 else y[:0]
    _check_values(mpi_comm, meta, start, count_nonfinite(X, labels), labels, loss)
    weight, total, source = None, float(meta.n), "none"
    if y is not None:
        weight, total, source = _weights(mpi_comm, meta, start, stop, compute_dtype, y, weight_key=weight_key,
                                         class_weight=class_weight, locking=locking, counts=col_start == 0)
    return BlockSlab(meta=meta, start=start, stop=stop, X=backend.to_device(X),
                     y=None if y is None else backend.to_device(y), dtype=compute_dtype,
                     weight=None if weight is None else backend.to_device(weight), total_weight=total,
                     weight_source=source, col_start=col_start, col_stop=col_stop)
