"""Run the commands of the README's quick start as printed (``make quickstart``, ``tests/test_readme.py``).

The quick start is the first fenced block after the ``## Quick start`` heading. Its ``make`` lines are set-up
and checks done elsewhere (``make demo`` before this runs, ``make test`` is the suite); every other line runs,
in order and in one ``bash -e`` shell, in a scratch directory whose ``.venv`` and ``data/demo.h5`` stand for the
checkout's. The shell starts without the virtual environment on ``PATH`` and without any ``OMPI_*``/``PRTE_*``
variable, as a fresh login would, so the block's own activation and exports are what make it work.

Usage: ``python tests/readme_quickstart.py WORKDIR`` (with the checkout's ``.venv`` and ``data/demo.h5``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "README.md")


def quickstart_lines(readme: str = README) -> list[str]:
    """The command lines of the quick-start block, comments after ``#`` outside quotes left in place."""
    with open(readme, encoding="utf-8") as handle:
        text = handle.read()
    section = text[text.index("\n## Quick start\n"):]
    block = section[section.index("\n```\n") + 5:]
    return [line for line in block[: block.index("\n```")].splitlines() if line.strip()]


def runnable_lines(lines: list[str]) -> list[str]:
    """The lines this script runs: all but the ``make`` ones."""
    return [line for line in lines if not line.lstrip().startswith("make ")]


def clean_environment(venv: str, environ=os.environ) -> dict:
    """The environment of a fresh shell: no virtual environment on PATH, no Open MPI/PRRTE variables."""
    venv_bin = os.path.join(os.path.realpath(venv), "bin")
    path = [part for part in environ.get("PATH", "").split(os.pathsep)
            if part and os.path.realpath(part) != venv_bin]
    return {name: value for name, value in environ.items()
            if not name.startswith(("OMPI_", "PRTE_", "PMIX_", "VIRTUAL_ENV"))} | {"PATH": os.pathsep.join(path)}


def prepare(workdir: str, venv: str, demo_data: str) -> None:
    """``workdir/.venv`` and ``workdir/data/demo.h5`` pointing at the given ones."""
    os.makedirs(os.path.join(workdir, "data"), exist_ok=True)
    for link, target in ((os.path.join(workdir, ".venv"), venv),
                         (os.path.join(workdir, "data", "demo.h5"), demo_data)):
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(target), link)


def run(workdir: str, lines: list[str], *, prefix: tuple = (), env: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``lines`` in one ``bash -e`` shell in ``workdir`` (``prefix``: e.g. a command changing the user)."""
    script = "\n".join(["set -e", *lines]) + "\n"
    return subprocess.run([*prefix, "bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", help="Scratch directory (made if missing).")
    workdir = os.path.abspath(parser.parse_args().workdir)
    venv = os.path.join(ROOT, ".venv")
    prepare(workdir, venv, os.path.join(ROOT, "data", "demo.h5"))
    lines = runnable_lines(quickstart_lines())
    print("\n".join(f"+ {line}" for line in lines), flush=True)
    done = run(workdir, lines, env=clean_environment(venv))
    sys.stdout.write(done.stdout + done.stderr)
    print(f"quick start {'ran as printed' if done.returncode == 0 else 'FAILED'} in {workdir}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
