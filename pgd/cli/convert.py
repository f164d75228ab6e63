"""``pgd data convert``'s dispatch: which converter of :mod:`pgd.data` runs, on which ranks.

LIBSVM (CSR or dense) and CSV (dense) conversions run on every rank under mpirun, each parsing its own
byte range (:func:`pgd.data.libsvm_convert.convert_libsvm`, :func:`pgd.data.sparse_csv_convert.convert_csv_parallel`);
SciPy ``.npz``, NumPy and dense <-> CSR conversions run on rank 0.
"""

from __future__ import annotations

from pgd.cli.common import on_rank0
from pgd.data import convert_file
from pgd.data.csr import is_csr_file
from pgd.data.libsvm_convert import Collective, convert_libsvm
from pgd.data.sparse_convert import convert_npz, csr_to_dense, dense_to_csr
from pgd.data.sparse_csv_convert import convert_csv_parallel
from pgd.errors import InputError

#: The output each input format gets without ``--to``.
DEFAULT_TO = {"libsvm": "csr", "npz": "csr", "csv": "dense", "npy": "dense", "h5": None}


def _check(source, fmt: str, to: str | None, y_file) -> str:
    """The output kind (``csr`` or ``dense``) for ``fmt``; InputError for a combination that does not exist."""
    to = to or DEFAULT_TO[fmt]
    if to is None:
        raise InputError("--from h5 needs --to csr or --to dense (which way to convert the pgd dataset)")
    if fmt == "h5" and is_csr_file(source) == (to == "csr"):
        raise InputError(f"{source} is already {'sparse (CSR)' if to == 'csr' else 'dense'}; nothing to convert")
    if fmt in ("csv", "npy") and to == "csr":
        raise InputError(f"--from {fmt} writes dense data; convert the result with `pgd data convert OUT.h5 "
                         f"CSR.h5 --from h5 --to csr`")
    if fmt == "npz" and to == "dense":
        raise InputError("--from npz writes CSR; convert the result with `pgd data convert OUT.h5 DENSE.h5 "
                         "--from h5 --to dense`")
    if y_file and fmt != "npz":
        raise InputError("--y-file is for --from npz (other formats carry their labels)")
    return to


def run_conversion(world, source, out, fmt: str, *, to: str | None, label_column, labels: str, y_file,
                   delimiter: str, header, n_features, zero_based: bool, dtype: str | None, task) -> dict:
    """Convert ``source`` to ``out`` (collective over ``world``); the summary dict on every rank."""
    size = world.Get_size()
    to = on_rank0(world, lambda: _check(source, fmt, to, y_file))
    if fmt == "libsvm":
        return convert_libsvm(source, out, dense=to == "dense", n_features=n_features, zero_based=zero_based,
                              dtype=dtype, labels=labels, task=task, collective=Collective.from_comm(world))
    if fmt == "csv" and size > 1 and labels != "classes":   # classes may be text: the serial converter's
        return convert_csv_parallel(source, out, label_column=label_column, labels=labels, delimiter=delimiter,
                                    header=header, dtype=dtype, task=task, collective=Collective.from_comm(world))
    if fmt == "npz":
        return on_rank0(world, lambda: convert_npz(source, out, labels=y_file, dtype=dtype, task=task))
    if fmt == "h5":
        convert = dense_to_csr if to == "csr" else csr_to_dense
        return on_rank0(world, lambda: convert(source, out, dtype=dtype))
    return on_rank0(world, lambda: convert_file(
        source, out, fmt, label_column=label_column, labels=labels, delimiter=delimiter, header=header,
        n_features=n_features, zero_based=zero_based, dtype=dtype, task=task))
