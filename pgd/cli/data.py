"""``pgd data …``: make, convert, inspect and rechunk datasets (the work is in :mod:`pgd.data`)."""

from __future__ import annotations

import json

import click

from pgd.cli.common import JSON_OPTION, echo_rank0, get_world, on_rank0, print_result
from pgd.cli.options import DATA_OPTIONS
from pgd.config import DTYPE, NONNEG_FLOAT, SEED, apply_options, option


@click.group()
def data():
    """Make, convert and inspect datasets in pgd's HDF5 format."""


@data.command("generate")
@click.argument("out", type=click.Path(dir_okay=False))
@option("--task", type=click.Choice(["regression", "binary"]), default="regression",
        help="regression: y = Xw + b + noise; binary: y ~ Bernoulli(sigmoid(Xw + b)).")
@option("--n", "n", type=click.IntRange(min=1), required=True, help="Rows.")
@option("--d", "d", type=click.IntRange(min=1), required=True, help="Columns.")
@option("--seed", type=SEED, default=0, help="Random seed.")
@option("--dtype", type=DTYPE, default="float32", help="Stored float type.")
@option("--noise", type=NONNEG_FLOAT, default=0.1, help="Noise level (see README).")
@option("--chunk-rows", type=click.IntRange(min=1), default=None, help="HDF5 chunk rows (default ≈1 MiB).")
@option("--sparse", is_flag=True, default=False,
        help="Write a text-like sparse (CSR) dataset: --nnz-per-row feature ids per row, drawn with power-law "
             "(Zipf) frequencies, positive values of unit row norm.")
@option("--nnz-per-row", type=click.IntRange(min=1), default=50, help="--sparse: draws per row (repeats dropped).")
@option("--power", type=click.FloatRange(min=0.0), default=1.0,
        help="--sparse: Zipf exponent of the feature frequencies (0: uniform).")
def data_generate(out, task, n, d, seed, dtype, noise, chunk_rows, sparse, nnz_per_row, power):
    """Write a synthetic dataset with known true weights, block by block (bounded memory)."""
    from pgd.data import generate_dataset  # noqa: PLC0415
    from pgd.data.sparse_generate import generate_sparse  # noqa: PLC0415

    world = get_world()
    if sparse:
        summary = on_rank0(world, lambda: generate_sparse(out, n, d, min(nnz_per_row, d), task=task, seed=seed,
                                                           power=power, dtype=dtype, noise=noise))
        echo_rank0(world, f"wrote {out}: {summary['n']} x {summary['d']} sparse CSR, {summary['nnz']} non-zeros "
                           f"({summary['dtype']}, {task})")
        return
    summary = on_rank0(world, lambda: generate_dataset(out, task, n, d, seed=seed, dtype=dtype,
                                                        noise=noise, chunk_rows=chunk_rows))
    echo_rank0(world, f"wrote {out}: {summary['n']} x {summary['d']} {summary['dtype']} ({task}), "
                       f"chunks {tuple(summary['chunks'])}")


@data.command("convert")
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@option("--from", "fmt", type=click.Choice(["csv", "npy", "libsvm", "npz", "h5"]), required=True,
        help="Input format: csv; npy (also .npz with X and y); libsvm (svmlight text); npz (a SciPy sparse "
             "matrix from scipy.sparse.save_npz, labels from --y-file); h5 (a pgd dataset, with --to).")
@option("--to", "to", type=click.Choice(["csr", "dense"]), default=None,
        help="Output /X: csr (sparse, anndata's encoding) or dense. Default: csr for libsvm and npz, dense for "
             "csv and npy; for --from h5 it is required (dense -> csr or csr -> dense).")
@option("--dense", is_flag=True, default=False, help="Same as --to dense.")
@option("--label-column", default=None,
        help="csv/npy: label column, an index (negative counts from the end) or a header name; "
             "default: the last column; none: no labels (data to predict on).")
@option("--labels", type=click.Choice(["asis", "pm1", "classes"]), default="asis",
        help="pm1: map labels -1/+1 to 0/1 (for logistic loss); classes: map the K classes (text or numbers, "
             "in sorted order) to 0..K-1 (LIBSVM: up to 50), stored as the attribute label_classes.")
@option("--y-file", type=click.Path(dir_okay=False), default=None,
        help="npz: labels from this .npy file (n numbers); without it the output has no labels.")
@option("--delimiter", default="auto", help="csv: field separator, \\t (or tab) for tabs; auto detects , ; tab |.")
@option("--header/--no-header", default=None, help="csv: first line is a header (default: detect).")
@option("--n-features", type=click.IntRange(min=1), default=None,
        help="libsvm: number of columns (default: the largest index; give the training file's to align a test file).")
@option("--zero-based", is_flag=True, default=False, help="libsvm: feature indices start at 0.")
@option("--dtype", type=DTYPE, default="float32", help="Stored float type (--from h5: the input's unless given).")
@option("--task", type=click.Choice(["regression", "binary"]), default=None,
        help="Task attribute (default: inferred from the labels).")
def data_convert(source, out, fmt, to, dense, label_column, labels, y_file, delimiter, header, n_features,
                 zero_based, dtype, task):
    """Convert CSV, NumPy, LIBSVM/svmlight, SciPy sparse or pgd data to pgd's HDF5 format (dense or CSR).

    libsvm and csv run in parallel under mpirun (every rank parses its own byte range; the output is the
    same for any number of ranks); the other conversions run on rank 0.
    """
    from pgd.cli.convert import run_conversion  # noqa: PLC0415 - keeps pgd --help fast

    if label_column is not None and label_column.lstrip("-").isdigit():
        label_column = int(label_column)
    if fmt == "h5" and click.get_current_context().get_parameter_source("dtype").name == "DEFAULT":
        dtype = None   # dense <-> CSR keeps the stored value type unless --dtype says otherwise
    world = get_world()
    summary = run_conversion(world, source, out, fmt, to="dense" if dense else to, label_column=label_column,
                             labels=labels, y_file=y_file, delimiter=delimiter, header=header,
                             n_features=n_features, zero_based=zero_based, dtype=dtype, task=task)
    shape = f"{summary['n']} x {summary['d']}"
    kind = f"sparse CSR, {summary['nnz']} non-zeros" if summary.get("sparse") else "dense"
    echo_rank0(world, f"wrote {out}: {shape} {kind} from {fmt} {source}"
                       + "".join(f"\npgd: note: {note}" for note in summary.get("notes", [])))


@data.command("info")
@click.argument("path", type=click.Path(dir_okay=False))
@apply_options(DATA_OPTIONS[:2])
@JSON_OPTION
@option("--scan/--no-scan", default=True, help="Scan the values (non-finite count, label summary).")
def data_info(path, x_key, y_key, as_json, scan):
    """Shape, dtype, chunking, label summary and non-finite values of a dataset (scanned in parallel)."""
    from pgd.comm.host import collectively  # noqa: PLC0415
    from pgd.data import block_range, combine_descriptions, describe_dataset, format_description  # noqa
    from pgd.loader.host import sparse_collectively  # noqa: PLC0415

    world = get_world()
    if sparse_collectively(world, path, x_key=x_key, locking="best-effort"):
        from pgd.data.describe import describe_csr_dataset, format_csr_description  # noqa: PLC0415

        description = on_rank0(world, lambda: describe_csr_dataset(path, x_key, y_key, scan=scan))
        print_result(world, description, as_json, format_csr_description(description))
        return
    part = None
    with collectively(world):
        whole = describe_dataset(path, x_key, y_key, scan=False)
        start, stop = block_range(whole["n"], world.Get_size(), world.Get_rank())
        part = describe_dataset(path, x_key, y_key, scan=scan, start=start, stop=stop)
    parts = world.gather(part, root=0)
    if world.Get_rank() == 0:
        description = combine_descriptions(parts) if scan else whole
        click.echo(json.dumps(description, indent=2, default=str) if as_json
                   else format_description(description))


@data.command("rechunk")
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@option("--chunks", required=True, metavar="R,C", help="Chunk rows and columns of the new /X.")
@option("--memory", type=click.IntRange(min=1), default=64 << 20, help="Copy buffer bound in bytes.")
@apply_options(DATA_OPTIONS)
def data_rechunk(source, out, chunks, memory, x_key, y_key, hdf5_locking):
    """Copy a dataset with /X chunked R x C (e.g. for --mode feature column reads), in bounded memory."""
    from pgd.data.rechunk import rechunk_dataset  # noqa: PLC0415

    world = get_world()
    summary = on_rank0(world, lambda: rechunk_dataset(source, out, chunks, x_key=x_key, y_key=y_key,
                                                       memory_bytes=memory, locking=hdf5_locking))
    echo_rank0(world, f"wrote {out}: {summary['n']} x {summary['d']}, chunks {tuple(summary['chunks'])} "
                       f"(was {summary['source_chunks']}), largest copy {summary['largest_tile_bytes']} B")
