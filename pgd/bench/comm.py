"""``pgd bench comm``: latency and bandwidth of the ways ranks combine a buffer, with an α-β model.

Run under ``mpirun -n K``. For each message size (8 B up to 64 MiB by default, ×4 steps) every method sums
a float64 buffer over the ranks: pgd's host communicators (``allreduce``: one ``MPI_Allreduce``;
``reduce-bcast``: ``MPI_Reduce`` then ``MPI_Bcast``) and, where CuPy finds a GPU, a device buffer staged
through host memory for ``MPI_Allreduce`` and NCCL's ``allReduce`` on device memory. A sample is the
max over ranks after a ``Barrier``; the median of the samples (warm-up excluded) is reported.

The model ``t(m) = α + β·m`` is fitted per method by least squares on relative error, and its prediction
is printed next to each measurement; ``1/β`` is the asymptotic bandwidth.
"""

from __future__ import annotations

import numpy as np

from pgd.bench.common import format_table, time_collective
from pgd.comm.host import COMMUNICATORS
from pgd.device.backend import gpu_count, load_cupy


def message_sizes(min_bytes: int, max_bytes: int, factor: int = 4) -> list[int]:
    """Sizes in bytes from ``min_bytes`` by ``factor`` up to and including ``max_bytes`` (multiples of 8)."""
    sizes, size = [], max(8, min_bytes - min_bytes % 8)
    while size < max_bytes:
        sizes.append(size)
        size *= factor
    sizes.append(max(8, max_bytes - max_bytes % 8))
    return sorted(set(sizes))


def fit_alpha_beta(sizes, seconds) -> tuple[float, float]:
    """``(α, β)`` of ``t = α + β·m`` minimising the squared *relative* error (small messages count)."""
    sizes, seconds = np.asarray(sizes, dtype=float), np.asarray(seconds, dtype=float)
    keep = seconds > 0
    if keep.sum() < 2:
        return 0.0, 0.0
    weights = 1.0 / seconds[keep]
    matrix = np.stack([weights, sizes[keep] * weights], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(matrix, np.ones(keep.sum()), rcond=None)
    return float(alpha), float(beta)


def _host_methods(world):
    """``name -> make(count) -> work()`` for pgd's host communicators."""
    def maker(name):
        def make(count):
            comm, buf = COMMUNICATORS[name](world), np.ones(count)
            return lambda: comm.allreduce(buf)
        return make
    return {name: maker(name) for name in COMMUNICATORS}


def _gpu_methods(world, notes: list):
    """Device-buffer methods where CuPy finds a GPU: staged through host memory, and NCCL."""
    from mpi4py import MPI  # noqa: PLC0415 - the α-β fit and sizes run without MPI

    from pgd.runtime.topology import node_local_rank  # noqa: PLC0415 - imports MPI

    if world.allreduce(gpu_count(), op=MPI.MIN) == 0:
        notes.append("no GPU rows: CuPy or a GPU is missing")
        return {}

    cp = load_cupy()
    cp.cuda.Device(node_local_rank(world)[0] % gpu_count()).use()

    def staged(count):
        device, host = cp.ones(count), np.empty(count)

        def work():
            device.get(out=host)
            if world.Get_size() > 1:
                world.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
            device.set(host)
            cp.cuda.get_current_stream().synchronize()
        return work

    methods = {"gpu-staged-allreduce": staged}
    try:
        from cupy.cuda import nccl  # noqa: PLC0415 - optional, GPU only

        uid = world.bcast(nccl.get_unique_id() if world.Get_rank() == 0 else None, root=0)
        nccl_comm = nccl.NcclCommunicator(world.Get_size(), uid, world.Get_rank())
    except Exception as error:  # noqa: BLE001 - NCCL missing, or refused (two ranks on one GPU)
        notes.append(f"no NCCL rows: {type(error).__name__}: {error}")
        return methods

    def nccl_allreduce(count):
        device, stream = cp.ones(count), cp.cuda.get_current_stream()

        def work():
            nccl_comm.allReduce(device.data.ptr, device.data.ptr, count, nccl.NCCL_FLOAT64, nccl.NCCL_SUM,
                                stream.ptr)
            stream.synchronize()
        return work

    methods["gpu-nccl-allreduce"] = nccl_allreduce
    return methods


def model_buffer_bytes(d: int) -> int:
    """Bytes of the buffer a data-parallel step sums for a ``d``-feature model: ``[Σ g_w, Σ g_b, Σ loss]``
    in float64, ``8 (d + 2)``."""
    return 8 * (int(d) + 2)


def sizes_for(min_bytes: int, max_bytes: int, model_bytes: int | None = None) -> list[int]:
    """:func:`message_sizes`, extended up to ``model_bytes`` when it lies beyond ``max_bytes``, and with
    ``model_bytes`` itself measured."""
    sizes = message_sizes(min_bytes, max(max_bytes, model_bytes or 0))
    return sorted(set(sizes) | ({model_bytes} if model_bytes else set()))


def comm_bench(world, *, min_bytes: int, max_bytes: int, repeats: int, gpu: bool = True,
               model_bytes: int | None = None) -> dict:
    """Measure every method at every size (:func:`sizes_for`); same result on every rank (collective).

    Returns
    -------
    dict
        ``rows`` (method, bytes, latency_us, bandwidth_gbs, model_us), ``models`` (α in µs, 1/β in GB/s
        per method) and ``notes``.
    """
    notes: list[str] = []
    methods = _host_methods(world)
    if gpu:
        methods.update(_gpu_methods(world, notes))
    rows, models = [], {}
    for name, make in methods.items():
        warm = make(1)
        for _ in range(200):  # connection set-up and first-touch costs stay out of the small sizes
            warm()
        mine = []
        for nbytes in sizes_for(min_bytes, max_bytes, model_bytes):
            inner = 1 if nbytes >= 1 << 20 else 10
            work = make(nbytes // 8)

            def batch(work=work, inner=inner):
                for _ in range(inner):
                    work()
            seconds = time_collective(world, batch, repeats if nbytes < 1 << 20 else max(3, repeats // 4))
            seconds /= inner
            mine.append({"method": name, "ranks": world.Get_size(), "bytes": nbytes,
                         "latency_us": seconds * 1e6, "bandwidth_gbs": nbytes / seconds / 1e9 if seconds else 0.0})
        alpha, beta = fit_alpha_beta([row["bytes"] for row in mine], [row["latency_us"] * 1e-6 for row in mine])
        models[name] = {"alpha_us": alpha * 1e6, "bandwidth_gbs": 1e-9 / beta if beta > 0 else None}
        for row in mine:
            row["model_us"] = (alpha + beta * row["bytes"]) * 1e6
        rows += mine
    return {"rows": rows, "models": models, "notes": notes}


def format_comm(result: dict) -> str:
    """The measurements with the fitted model next to them, one block per method."""

    lines = [f"comm bench: {result['rows'][0]['ranks']} rank(s); median of repeats, max over ranks"]
    columns = [("bytes", "bytes", "d"), ("latency us", "latency_us", ".2f"), ("model us", "model_us", ".2f"),
               ("GB/s", "bandwidth_gbs", ".3f")]
    for name, model in result["models"].items():
        bandwidth = f"{model['bandwidth_gbs']:.3f} GB/s" if model["bandwidth_gbs"] else "n/a"
        lines.append(f"{name}: alpha = {model['alpha_us']:.2f} us, 1/beta = {bandwidth}")
        lines.append(format_table([row for row in result["rows"] if row["method"] == name], columns))
    lines += [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)
