"""What rank 0 shows while training: a live bar on a terminal, log lines otherwise, then a summary.

Conventions
-----------
- Only rank 0 shows anything (``enabled``); nothing here communicates, so what is shown never changes a run.
- Where the bar goes (:func:`terminal_stream`): standard error when it is a terminal (a plain run, ``srun
  --pty``); otherwise standard output when it is a terminal *and* so is the output of the process that
  started pgd (:func:`parent_terminal`, skipping shells in between). Under Open MPI's ``mpirun`` every rank's
  standard output is a pseudo-terminal of the launcher's (whether or not anyone watches) and its standard
  error a pipe, so the second test asks whether ``mpirun`` itself writes to a terminal.
- The bar is redrawn as a whole line (cursor up, text, clear to the end, newline): launchers forward a
  rank's output a line at a time, so a bare carriage return would show nothing until the run ends. At most
  ten redraws a second; the line is cut to the terminal's width so that it never wraps.
- Off a terminal: a log line on standard error every ``log_every`` iterations (default: about ten per run)
  and whenever :data:`LOG_SECONDS` passed since the last line, so a slow run is never silent for longer than
  that plus one iteration.
- Every line shows the iteration, loss, gradient norm (the optimality measure), time per iteration (over this
  process's iterations, so a resumed run is timed from its resume), elapsed time and the time the rest of
  the iteration budget would take (an upper bound: a run may converge sooner).
"""

from __future__ import annotations

import os
import sys
import time

#: Longest silence (seconds) between two log lines off a terminal.
LOG_SECONDS = 10.0
#: Shortest interval (seconds) between two redraws of the bar.
REDRAW_SECONDS = 0.1
_BAR_WIDTH = 20
_TEXT_ROOM = 80  # columns kept for the numbers; the bar takes what is left of the terminal's width, up to 20
_REDRAW = "\x1b[1A\r"  # cursor to the start of the line above (the bar's)
_CLEAR_TO_END = "\x1b[K"


def _format_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _busiest_rank(ranks: int, timing: dict) -> str:
    """Whose split the summary's wall line shows, and the least compute of a rank (several ranks only)."""
    if ranks <= 1 or "compute_min" not in timing:
        return ""
    return (f" (the rank that computed longest; the least compute of a rank "
            f"{_format_seconds(timing['compute_min'])})")


def _format_clock(seconds: float) -> str:
    """``M:SS`` or ``H:MM:SS``."""
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _output_of(pid: int) -> str | None:
    """Where process ``pid``'s standard output goes (``/proc/PID/fd/1``), or None."""
    try:
        return os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return None


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
    except (OSError, ValueError, IndexError):
        return 0


def parent_terminal(pid: int | None = None, own: str | None = None) -> str | None:
    """The terminal that the process which started this one writes to, or None (Linux: ``/proc``).

    Starting from ``pid`` (default: the parent), ancestors whose output is ``own`` (default: this
    process's standard output) are skipped: a shell between ``mpirun`` and pgd writes to the same
    pseudo-terminal of the launcher; the first ancestor writing elsewhere decides.
    """
    pid = os.getppid() if pid is None else pid
    if own is None:
        own = _output_of(os.getpid())
    for _ in range(16):
        target = _output_of(pid)
        if target is None:
            return None
        if target != own:
            return target if target.startswith(("/dev/pts/", "/dev/tty")) else None
        pid = _parent_of(pid)
        if pid <= 1:
            return None
    return None


def terminal_stream(stderr=None, stdout=None, parent=parent_terminal):
    """The stream to draw the bar on, or None (log lines then). See the module's conventions."""
    stderr = sys.stderr if stderr is None else stderr
    stdout = sys.stdout if stdout is None else stdout
    if _isatty(stderr):
        return stderr
    if _isatty(stdout) and parent() is not None:
        return stdout
    return None


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a file
        return False


def _width(fd: int) -> int:
    try:
        return os.get_terminal_size(fd).columns
    except OSError:
        return 0


def terminal_columns(stream) -> int:
    """Width of the terminal behind ``stream``: its own size, else that of the terminal the parent process
    writes to (a launcher's pseudo-terminal has no size), else ``COLUMNS``, else 80."""
    try:
        columns = _width(stream.fileno())
    except (AttributeError, ValueError):
        columns = 0
    device = None if columns else parent_terminal()
    if device is not None:
        try:
            fd = os.open(device, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            pass
        else:
            try:
                columns = _width(fd)
            finally:
                os.close(fd)
    if not columns and os.environ.get("COLUMNS", "").isdigit():
        columns = int(os.environ["COLUMNS"])
    return columns or 80


class Progress:
    """Live progress of the iterations, shown by rank 0 only.

    Parameters
    ----------
    total : int
        Iteration budget.
    enabled : bool
        False on ranks other than 0 and with ``--quiet``.
    log_every : int
        Log-line interval off a terminal; 0 picks about ten lines per run.
    terminal : file or None, optional
        Where to draw the bar; None writes log lines instead. Default: :func:`terminal_stream`.
    log : file, optional
        Where log lines go (standard error by default).
    clock : callable, optional
        Seconds from an arbitrary origin (``time.monotonic``).
    """

    def __init__(self, total: int, *, enabled: bool, log_every: int = 0, terminal="auto", log=None,
                 clock=time.monotonic):
        self.total = max(total, 1)
        self.enabled = enabled
        self.terminal = (terminal_stream() if terminal == "auto" else terminal) if enabled else None
        self.columns = terminal_columns(self.terminal) if self.terminal is not None else 0
        self.bar_width = min(_BAR_WIDTH, self.columns - _TEXT_ROOM - 3)
        self.log = log if log is not None else sys.stderr
        self.log_every = log_every or max(1, self.total // 10)
        self.clock = clock
        self._started = clock()
        self._first = None  # (iteration, time) of the first update: the per-iteration time counts from it
        self._shown = None  # (iteration, time) of the last line shown
        self.note = ""  # shown at the end of every line (the latest validation, for example)
        self._drawn = False

    def update(self, iteration: int, loss: float, grad_norm: float, force: bool = False) -> None:
        """Report iterate ``iteration``; shown when due (with ``force``: always, but never two log lines for
        one iterate)."""
        if not self.enabled:
            return
        now = self.clock()
        if self._first is None:
            self._first = (iteration, now)
        if self._shown is not None:
            last_iteration, last_time = self._shown
            if force:  # the final state: redrawn in place, or a log line unless this iterate had one
                due = self.terminal is not None or last_iteration != iteration
            elif self.terminal is not None:
                due = now - last_time >= REDRAW_SECONDS
            else:
                due = iteration % self.log_every == 0 or now - last_time >= LOG_SECONDS
            if not due:
                return
        self._shown = (iteration, now)
        pace = self._pace(iteration, now, finished=force)
        elapsed = _format_clock(now - self._started)
        if self.terminal is not None:
            note = "  " + self.note if self.note else ""
            self._draw(iteration, f"{iteration}/{self.total} loss {loss:.7g} |grad| {grad_norm:.2e} "
                                  f"{pace[0] + '/it ' if pace else ''}{elapsed} elapsed"
                                  f"{', <=' + pace[1] + ' left' if pace else ''}{note}")
        else:
            self.log.write(f"pgd: iter {iteration:>{len(str(self.total))}}/{self.total}  loss {loss:.10g}  "
                           f"|grad| {grad_norm:.3e}  {pace[0] + '/it  ' if pace else ''}elapsed {elapsed}"
                           f"{'  left <= ' + pace[1] if pace else ''}{'  ' + self.note if self.note else ''}\n")
            self.log.flush()

    def finish(self, iteration: int, loss: float, grad_norm: float) -> None:
        """Show the last iterate as final (nothing left), once."""
        self.update(iteration, loss, grad_norm, force=True)

    def _pace(self, iteration: int, now: float, finished: bool) -> tuple[str, str] | None:
        """Time per iteration since the first update and what the rest of the budget would take at that
        pace (``0:00`` when ``finished``; None before the second iterate)."""
        first_iteration, first_time = self._first
        if iteration <= first_iteration:
            return None
        per_iteration = (now - first_time) / (iteration - first_iteration)
        left = 0.0 if finished else per_iteration * max(self.total - iteration, 0)
        return _format_seconds(per_iteration), _format_clock(left)

    def _draw(self, iteration: int, text: str) -> None:
        """Redraw the bar's line (a bar when the terminal is wide enough, then the numbers)."""
        if self.bar_width >= 5:
            filled = int(self.bar_width * min(iteration, self.total) / self.total)
            text = f"[{'#' * filled}{'.' * (self.bar_width - filled)}] {text}"
        text = text[: max(self.columns - 1, 1)]
        self.terminal.write((_REDRAW if self._drawn else "") + text + _CLEAR_TO_END + "\n")
        self.terminal.flush()
        self._drawn = True


def _updates_line(summary: dict) -> str:
    """Mode ``async``/``shm``/local SGD: updates applied, staleness observed, time spent waiting."""
    text = f"  {summary['mode']}: {summary['updates']} updates applied"
    if "staleness_max" in summary:
        text += f"; staleness max {summary['staleness_max']}, mean {summary['staleness_mean']:.2f} updates"
    if "clock_gap_max" in summary:
        text += f"; clock gap max {summary['clock_gap_max']} (bound {summary['staleness_bound']})"
    return text + f"; waiting {_format_seconds(summary['wait_seconds'])} (max over ranks)"


def _classes(summary: dict) -> str:
    """`` (K classes)`` for a multinomial run."""
    return f" ({summary['n_classes']} classes)" if summary.get("n_classes") else ""


def format_summary(summary: dict) -> str:
    """The end-of-run report: what ran, why it stopped, where the time went (max over ranks)."""
    timing = summary["timing"]
    lines = [
        f"pgd train: {summary['loss']} loss{_classes(summary)}, {summary['ranks']} rank(s), {summary['device']}, "
        f"comm {summary['communicator']}, {summary['dtype']}, optimizer {summary['optimizer']}",
        f"  data {summary['data']}: {summary['n']} rows x {summary['d']} columns"
        + (f", sparse CSR with {summary['nnz']} non-zeros" if summary.get("data_format") == "csr" else ""),
        f"  MPI on device buffers: {summary.get('cuda_aware', 'no GPU')}",
        *([f"  gradient: {summary['gradient_kernel']}"]
          if "gradient_kernel" in summary and (summary["device"].startswith("gpu")
                                               or summary.get("data_format") == "csr"
                                               or "numba" in summary["gradient_kernel"]) else []),
        f"  stopped after {summary['iterations']} iterations: {summary['stop_reason']}",
        f"  loss {summary['final_loss']:.12g}  |grad| {summary['grad_norm']:.3e}  "
        f"lr {summary['lr']:.6g}{' (auto, 1/L)' if summary['lr_auto'] else ''}",
        *([f"  set-up {_format_seconds(timing['setup'])} (data, standardisation, step size; max over ranks)"
           + (f", peak memory {summary['peak_rss_bytes'] / 2**20:.0f} MiB (max over ranks)"
              if "peak_rss_bytes" in summary else "")] if "setup" in timing else []),
        f"  wall {_format_seconds(timing['wall'])}: compute {_format_seconds(timing['compute'])}, "
        f"communication {_format_seconds(timing['comm'])}, other {_format_seconds(timing['other'])}"
        f"{_busiest_rank(summary['ranks'], timing)}; {_format_seconds(timing['per_iteration'])}/iteration, "
        f"{summary['comm_bytes_per_iteration']} B communicated per iteration per rank",
    ]
    if "validation" in summary:
        metrics = summary.get("validation_metrics") or {}
        shown = "  ".join(f"{key} {value:.6g}" for key, value in metrics.items() if key != "iteration")
        lines.append(f"  validation on {summary['validation_rows']} rows ({summary['validation']}): {shown} "
                     f"(weights of iteration {metrics.get('iteration')})")
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
