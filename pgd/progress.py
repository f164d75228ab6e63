"""What rank 0 shows while training: a progress bar on a terminal, log lines otherwise, then a summary."""

from __future__ import annotations

import sys
import time


def _format_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


class Progress:
    """Live progress of the iterations, shown by rank 0 only.

    Parameters
    ----------
    total : int
        Iteration budget.
    enabled : bool
        False on ranks other than 0 and with ``--quiet``.
    log_every : int
        Log-line interval when not on a terminal; 0 picks about ten lines per run.
    stream : file, optional
        Where to write (standard error by default).
    """

    def __init__(self, total: int, *, enabled: bool, log_every: int = 0, stream=None):
        self.total = max(total, 1)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.on_terminal = enabled and self.stream.isatty()
        self.log_every = log_every or max(1, self.total // 10)
        self._last_draw = 0.0
        self._started = time.perf_counter()

    def update(self, iteration: int, loss: float, grad_norm: float, force: bool = False) -> None:
        """Report iterate ``iteration``; drawn at most ten times a second on a terminal."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self._started
        per_iteration = elapsed / max(iteration, 1)
        text = (f"iter {iteration:>{len(str(self.total))}}/{self.total}  loss {loss:.10g}  "
                f"|grad| {grad_norm:.3e}  {_format_seconds(per_iteration)}/it")
        if self.on_terminal:
            now = time.perf_counter()
            if not force and now - self._last_draw < 0.1:
                return
            self._last_draw = now
            width = 24
            filled = int(width * min(iteration, self.total) / self.total)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}\033[K")
            self.stream.flush()
        elif force or iteration % self.log_every == 0:
            self.stream.write(f"pgd: {text}\n")
            self.stream.flush()

    def close(self) -> None:
        """End the progress bar's line."""
        if self.on_terminal:
            self.stream.write("\n")
            self.stream.flush()


def _updates_line(summary: dict) -> str:
    """Mode ``async``/``shm``/local SGD: updates applied, staleness observed, time spent waiting."""
    text = f"  {summary['mode']}: {summary['updates']} updates applied"
    if "staleness_max" in summary:
        text += f"; staleness max {summary['staleness_max']}, mean {summary['staleness_mean']:.2f} updates"
    if "clock_gap_max" in summary:
        text += f"; clock gap max {summary['clock_gap_max']} (bound {summary['staleness_bound']})"
    return text + f"; waiting {_format_seconds(summary['wait_seconds'])} (max over ranks)"


def format_summary(summary: dict) -> str:
    """The end-of-run report: what ran, why it stopped, where the time went (max over ranks)."""
    timing = summary["timing"]
    lines = [
        f"pgd train: {summary['loss']} loss, {summary['ranks']} rank(s), {summary['device']}, "
        f"comm {summary['communicator']}, {summary['dtype']}, optimizer {summary['optimizer']}",
        f"  data {summary['data']}: {summary['n']} rows x {summary['d']} columns",
        f"  MPI on device buffers: {summary.get('cuda_aware', 'no GPU')}",
        *([f"  gradient: {summary['gradient_kernel']}"]
          if "gradient_kernel" in summary and summary["device"].startswith("gpu") else []),
        f"  stopped after {summary['iterations']} iterations: {summary['stop_reason']}",
        f"  loss {summary['final_loss']:.12g}  |grad| {summary['grad_norm']:.3e}  "
        f"lr {summary['lr']:.6g}{' (auto, 1/L)' if summary['lr_auto'] else ''}",
        f"  wall {_format_seconds(timing['wall'])}: compute {_format_seconds(timing['compute'])}, "
        f"communication {_format_seconds(timing['comm'])}, other {_format_seconds(timing['other'])} "
        f"(max over ranks); {_format_seconds(timing['per_iteration'])}/iteration, "
        f"{summary['comm_bytes_per_iteration']} B communicated per iteration per rank",
    ]
    if summary.get("solver", "iterative") != "iterative":
        lines.append(f"  solver {summary['solver']}")
    if "epochs" in summary:
        lines.append(f"  sgd: {summary['epochs']:.4g} epochs of {summary['steps_per_epoch']} steps, global batch "
                     f"{summary['batch_size']}, schedule {summary['schedule']}; full loss evaluated per epoch")
    if "updates" in summary:
        lines.append(_updates_line(summary))
    if summary.get("out"):
        lines.append(f"  model written to {summary['out']}")
    if summary.get("metrics"):
        lines.append(f"  metrics written to {summary['metrics']}")
    return "\n".join(lines)
