"""The README stays true: its quick start runs as printed (on small data), its Layout names the modules there are."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from support.mpi import MPIRUN, needs_mpirun
from support.readme_quickstart import README, ROOT, clean_environment, prepare, quickstart_lines, run, runnable_lines

VENV = sys.prefix
UNPRIVILEGED = 65534  # nobody


def _small_demo_data(folder: str) -> str:
    """``data/demo.h5`` as ``make demo`` makes it, but 2,000 rows instead of 400,000."""
    path = os.path.join(folder, "demo-small.h5")
    done = subprocess.run([os.path.join(VENV, "bin", "pgd"), "data", "generate", path, "--task", "binary",
                           "--n", "2000", "--d", "8", "--seed", "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return path


def _check_outputs(workdir: str, done) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 rank(s)" in done.stdout and "roc_auc" in done.stdout and "wrote pred.h5" in done.stdout
    for name in ("model.h5", "metrics.jsonl", "pred.h5"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name


def test_the_quick_start_block_is_what_make_and_the_suite_expect():
    lines = quickstart_lines()
    assert lines[0].startswith("make demo") and lines[-1].startswith("make test")
    commands = runnable_lines(lines)
    assert commands[0].startswith(". .venv/bin/activate")
    assert sum(line.startswith("mpirun -n 4 pgd ") for line in commands) == 3
    # make demo and make quickstart exist (dry run: nothing is executed)
    done = subprocess.run(["make", "-n", "demo", "quickstart"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pgd train data/demo.h5" in done.stdout and "readme_quickstart.py" in done.stdout


@pytest.mark.mpi
@needs_mpirun
def test_quick_start_runs_as_printed(tmp_path):
    """A shell without the venv on PATH and without Open MPI variables (as root here: the block's root line
    is what lets mpirun start)."""
    prepare(str(tmp_path), VENV, _small_demo_data(str(tmp_path)))
    done = run(str(tmp_path), runnable_lines(quickstart_lines()), env=clean_environment(VENV), timeout=240)
    _check_outputs(str(tmp_path), done)


def _usable_by_others(path: str) -> bool:
    """Whether a user outside the owner's group can reach ``path`` (every directory above it searchable)."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for depth in range(2, len(parts)):
        if not os.stat(os.sep.join(parts[:depth])).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(path).st_mode & stat.S_IROTH)


@pytest.mark.mpi
@needs_mpirun
def test_quick_start_runs_as_printed_as_an_unprivileged_user():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user")
    if not (_usable_by_others(sys.executable) and _usable_by_others(MPIRUN)):
        pytest.skip(f"{os.path.realpath(sys.executable)} is not usable by other users (a Python under /root)")
    with tempfile.TemporaryDirectory() as workdir:
        os.chmod(workdir, 0o777)
        prepare(workdir, VENV, _small_demo_data(workdir))
        os.chmod(os.path.join(workdir, "data"), 0o777)
        done = run(workdir, runnable_lines(quickstart_lines()),
                   prefix=("setpriv", f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--clear-groups"),
                   env=dict(clean_environment(VENV), HOME=workdir), timeout=240)
        _check_outputs(workdir, done)


def test_layout_names_every_module_and_only_existing_ones():
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    layout = text[text.index("\n## Layout\n"):]
    named = set(re.findall(r"`(?:pgd/)?([\w*]+\.py)`", layout))
    existing = {name for name in os.listdir(os.path.join(ROOT, "pgd")) if name.endswith(".py")}
    for name in named:  # a pattern such as gpu_*.py must match something
        assert any(re.fullmatch(name.replace("*", ".*"), module) for module in existing), name
    for module in existing - {"__init__.py", "__main__.py"}:
        assert any(re.fullmatch(name.replace("*", ".*"), module) for name in named), module


def test_layout_names_every_module_of_every_folder_and_only_existing_ones():
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    layout = text[text.index("\n## Layout\n"):]
    items = re.split(r"\n- ", layout)
    folders = {}
    for item in items:
        heading = re.match(r"`pgd/(\w+)/`:", item)
        if heading:
            folders[heading.group(1)] = set(re.findall(r"`(\w+)`", item[heading.end():]))
    packages = {name for name in os.listdir(os.path.join(ROOT, "pgd"))
                if os.path.isfile(os.path.join(ROOT, "pgd", name, "__init__.py"))}
    assert set(folders) == packages
    for folder, named in folders.items():
        existing = {name[:-3] for name in os.listdir(os.path.join(ROOT, "pgd", folder))
                    if name.endswith(".py") and name != "__init__.py"}
        assert named == existing, folder
