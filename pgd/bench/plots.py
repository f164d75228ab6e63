"""PNG plots of benchmark results; matplotlib (the ``plot`` extra) is imported only when a plot is made."""

from __future__ import annotations

from pgd.errors import InputError


def _pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend, or a one-line error."""
    try:
        import matplotlib  # noqa: PLC0415
    except ImportError:
        raise InputError("plots need matplotlib: pip install 'pgd[plot]' (or pass --no-plot)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _save(fig, path: str) -> str:
    from pgd.fileio import atomic_path  # noqa: PLC0415

    with atomic_path(path) as temporary:
        fig.savefig(temporary, format="png", dpi=80)
    _pyplot().close(fig)
    return path


def plot_scaling(rows: list[dict], kind: str, path: str) -> str:
    """Time per iteration (total, compute, communication) and efficiency against ranks, log axes, ideal lines.

    Returns
    -------
    str
        ``path``, written atomically.
    """
    plt = _pyplot()
    from matplotlib.ticker import NullLocator  # noqa: PLC0415

    ranks = [row["ranks"] for row in rows]
    base_ranks, base_time = ranks[0], rows[0]["time_per_iter"] * 1e3
    ideal = [base_time * base_ranks / k if kind == "strong" else base_time for k in ranks]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(ranks, [row["time_per_iter"] * 1e3 for row in rows], "o-", label="total")
    left.plot(ranks, [row["compute"] * 1e3 for row in rows], "s--", label="compute")
    talking = [row for row in rows if row["ranks"] > 1]  # one rank makes no MPI call: nothing to draw
    left.plot([row["ranks"] for row in talking], [max(row["communication"] * 1e3, 1e-4) for row in talking],
              "^--", label="communication")
    left.plot(ranks, ideal, "k:", label="ideal")
    left.set(xscale="log", yscale="log", xlabel="ranks", ylabel="ms per iteration",
             title=f"{kind} scaling: time")
    right.plot(ranks, [row["efficiency"] for row in rows], "o-", label="measured")
    right.plot(ranks, [1.0] * len(ranks), "k:", label="ideal")
    right.set(xscale="log", xlabel="ranks", ylabel="parallel efficiency", ylim=(0, 1.2),
              title=f"{kind} scaling: efficiency")
    first = rows[0]
    fig.suptitle(f"{first['loss']}, d = {first['d']}, n = {first['n']}{' per rank' if kind == 'weak' else ''}, "
                 f"{first['mode']}/{first['comm']}, {first['device']}", fontsize=9)
    for axes in (left, right):
        axes.xaxis.set_minor_locator(NullLocator())
        axes.set_xticks(ranks, [str(k) for k in ranks])
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_comm(rows: list[dict], path: str) -> str:
    """Latency and bandwidth against message size, one line per method, log axes."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        sizes = [row["bytes"] for row in mine]
        left.plot(sizes, [row["latency_us"] for row in mine], "o-", label=method)
        right.plot(sizes, [max(row["bandwidth_gbs"], 1e-6) for row in mine], "o-", label=method)
    left.set(xscale="log", yscale="log", xlabel="message bytes", ylabel="µs", title="latency")
    right.set(xscale="log", yscale="log", xlabel="message bytes", ylabel="GB/s", title="bandwidth")
    for axes in (left, right):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    fig.suptitle(f"{rows[0]['ranks']} ranks", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
