"""Run ``pgd`` inside the test process (one rank): fast, and an abort fails the test instead of ending it."""

from __future__ import annotations

import signal

import pytest

import pgd.cli.entry


class Aborted(Exception):
    """pgd tried to abort the job (an internal error)."""


def _on_alarm(signum, frame):
    raise TimeoutError("pgd did not finish in time (hang?)")


def run_main(monkeypatch, capsys, *args, hang_seconds: int = 60) -> tuple[int, str, str]:
    """``pgd ARGS`` through :func:`pgd.cli.entry.main`; returns (exit code, stdout, stderr)."""

    def abort(code):
        raise Aborted(f"pgd aborted with exit code {code}")

    monkeypatch.setattr(pgd.cli.entry, "abort_job", abort)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(hang_seconds)
    try:
        with pytest.raises(SystemExit) as stop:
            pgd.cli.entry.main([str(a) for a in args])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    return stop.value.code, out, err
