"""Nothing lost: no output may be an input or another output, in any command; bad inputs get one line.

Every refused case asserts exit 2, one ``pgd: error:`` line (from rank 0 only, under mpirun) and that every
file that existed before is byte-identical afterwards (and that nothing new appeared).
"""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from support import ROOT
from support.files import assert_one_error_line, read_weights, snapshot, write_dataset
from support.inprocess import run_main
from support.mpi import run_cases


@pytest.fixture()
def files(tmp_path):
    """A dataset, a model trained on it, and CSV / .npy sources, in a fresh directory."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((40, 3))
    y = (X @ [1.0, -1.0, 0.5] > 0).astype(float)
    data = write_dataset(tmp_path / "d.h5", X, y)
    np.save(tmp_path / "a.npy", np.column_stack([X, y]))
    np.savetxt(tmp_path / "a.csv", np.column_stack([X, y]), delimiter=",")
    model = tmp_path / "m.h5"
    with h5py.File(model, "w") as handle:
        handle["w"], handle["b"] = np.ones(3), 0.5
        handle.attrs["loss"] = "logistic"
    return {"dir": tmp_path, "data": data, "model": str(model), "npy": str(tmp_path / "a.npy"),
            "csv": str(tmp_path / "a.csv")}


def _refused(files, monkeypatch, capsys, args, fragment, env=None):
    before = snapshot(files["dir"])
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    code, out, err = run_main(monkeypatch, capsys, *args)
    for name in env or {}:
        monkeypatch.delenv(name)
    assert code == 2, (args, out, err)
    lines = [line for line in err.splitlines() if line.startswith(("pgd: error", "Error:"))]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, (args, err)
    assert snapshot(files["dir"]) == before  # nothing changed, nothing new


def test_outputs_never_overwrite_inputs_or_each_other(files, monkeypatch, capsys):
    d, m, tmp = files["data"], files["model"], files["dir"]
    train = ["train", d, "--loss", "logistic", "--max-iter", "2", "--quiet"]
    os.link(d, tmp / "hard.h5")
    os.symlink(d, tmp / "soft.h5")
    cases = [
        (train + ["--out", d], None, f"--out {d} is the same file as the data file {d}"),
        (train + ["--metrics", d], None, "--metrics"),
        (train + ["--checkpoint", d], None, f"--checkpoint {d} is the same file as the data file"),
        (train + ["--out", tmp / "x.h5", "--metrics", tmp / "x.h5"], None, "--out and --metrics are the same file"),
        (train + ["--out", tmp / "hard.h5"], None, "is the same file as the data file"),  # a hard link: same inode
        (train + ["--out", tmp / "soft.h5"], None, "is the same file as the data file"),  # a symbolic link
        (train + ["--checkpoint", tmp / "ck.h5", "--out", tmp / "ck.h5.prev"], None,
         "--out and --checkpoint's previous file are the same file"),
        (train, {"PGD_OUT": d}, f"--out (from PGD_OUT) {d} is the same file as the data file"),
        (["predict", m, d, "--out", m], None, f"--out {m} is the same file as the model file"),
        (["predict", m, d, "--out", d], None, f"--out {d} is the same file as the data file"),
        (["predict", m, d], {"PGD_PREDICT_OUT": m}, "--out (from PGD_PREDICT_OUT)"),
        (["predict", m, d], {"PGD_OUT": m}, "Missing option '--out'"),  # pgd train's variable: not predict's
        (["data", "convert", files["npy"], files["npy"], "--from", "npy"], None, "OUT"),
        (["data", "convert", files["csv"], files["csv"], "--from", "csv"], None, "is the same file as the source"),
        (["data", "rechunk", d, tmp / "soft.h5", "--chunks", "10,2"], None, "is the same file as the source"),
    ]
    for args, env, fragment in cases:
        _refused(files, monkeypatch, capsys, args, fragment, env)


def test_numeric_options_refuse_nan_inf_and_out_of_range(files, monkeypatch, capsys):
    train = ["train", files["data"], "--loss", "logistic", "--max-iter", "2", "--quiet"]
    for option, value in [("--l2", "nan"), ("--tol", "nan"), ("--rtol", "inf"), ("--l1", "-inf"),
                          ("--target-loss", "nan"), ("--checkpoint-seconds", "inf"), ("--momentum", "nan"),
                          ("--eps", "inf"), ("--seed", "-1"), ("--max-time", "inf"), ("--lr", "nan")]:
        _refused(files, monkeypatch, capsys, train + [option, value], f"'{option}'")
    _refused(files, monkeypatch, capsys, ["data", "generate", files["dir"] / "g.h5", "--n", "5", "--d", "2",
                                          "--noise", "nan"], "'--noise'")


def _walk(command, path=()):
    import click  # noqa: PLC0415

    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _walk(sub, path + (name,))
    else:
        yield path, command


def test_every_option_has_its_own_environment_variable():
    """pgd train keeps PGD_<OPTION>; every other command's variables carry the command's name; no two
    options share one, and none is a variable pgd reads for itself (PGD_DEBUG, PGD_BLAS_THREADS, ...)."""
    import re  # noqa: PLC0415

    import click  # noqa: PLC0415

    from pgd.cli.app import cli  # noqa: PLC0415
    from pgd.config import envvar_for  # noqa: PLC0415

    owners = {}
    for path, command in _walk(cli):
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            variable = envvar_for(param.flag_name, path) if hasattr(param, "flag_name") else param.envvar
            if variable:
                assert variable not in owners, (variable, owners.get(variable), path)
                owners[variable] = (path, param.name)
    assert owners["PGD_MAX_ITER"] == (("train",), "max_iter")
    assert owners["PGD_DATA_GENERATE_DTYPE"] == (("data", "generate"), "dtype")
    assert owners["PGD_DATA_RECHUNK_MEMORY"] == (("data", "rechunk"), "memory")
    assert owners["PGD_DATA_CONVERT_FROM"] == (("data", "convert"), "fmt")
    package = os.path.join(ROOT, "pgd")
    internal = set()
    for root, _, names in os.walk(package):
        for name in names:
            if name.endswith(".py"):
                with open(os.path.join(root, name), encoding="utf-8") as handle:
                    internal.update(re.findall(r'"(PGD_[A-Z0-9_]+)"', handle.read()))
    internal -= {"PGD_CUDA_AWARE"}  # pgd info reads pgd train's variable on purpose, to show its decision
    assert internal and not internal & set(owners), internal & set(owners)


def test_environment_variables_reach_their_command_only(files, monkeypatch, capsys):
    monkeypatch.setenv("PGD_DTYPE", "auto")  # valid for pgd train, once broke pgd data generate
    code, _, err = run_main(monkeypatch, capsys, "data", "generate", files["dir"] / "g.h5", "--n", "5", "--d", "2")
    assert code == 0, err
    monkeypatch.setenv("PGD_DATA_GENERATE_DTYPE", "float64")
    code, _, err = run_main(monkeypatch, capsys, "data", "generate", files["dir"] / "g.h5", "--n", "5", "--d", "2")
    assert code == 0, err
    with h5py.File(files["dir"] / "g.h5") as handle:
        assert handle["X"].dtype == np.float64


def test_hdf5_open_failures_say_what_happened(files, tmp_path):
    from pgd.data import inspect_dataset  # noqa: PLC0415
    from pgd.errors import InputError  # noqa: PLC0415

    raw = open(files["data"], "rb").read()
    (tmp_path / "cut.h5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut.h5 is truncated: \d+ bytes of \d+ \(an incomplete copy"):
        inspect_dataset(tmp_path / "cut.h5")
    writer = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time; f = h5py.File(sys.argv[1], 'a'); "
                               "print('open', flush=True); time.sleep(30)", files["data"]],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(InputError, match="is open for writing by another process") as refused:
            inspect_dataset(files["data"])
        assert "--hdf5-locking false" not in str(refused.value)
    finally:
        writer.kill()
        writer.wait()
    with h5py.File(tmp_path / "links.h5", "w") as handle:
        handle["X"] = h5py.SoftLink("/nowhere")
        handle["E"] = h5py.ExternalLink("missing.h5", "/X")
        handle["y"] = np.zeros(3)
    with pytest.raises(InputError, match="/X is a link to /nowhere, which does not exist"):
        inspect_dataset(tmp_path / "links.h5")
    with pytest.raises(InputError, match="/E is an external link to /X in missing.h5, which does not exist"):
        inspect_dataset(tmp_path / "links.h5", x_key="E")


@pytest.mark.mpi
def test_bad_inputs_under_mpirun(files):
    """Representative refusals on 2 ranks in one job: same files, numeric options, a truncated file, a
    dangling link, a dataset too big for memory; and a (n, 1) /y that is accepted."""
    tmp, d, m = files["dir"], files["data"], files["model"]
    raw = open(d, "rb").read()
    (tmp / "cut.h5").write_bytes(raw[: len(raw) // 2])
    with h5py.File(tmp / "links.h5", "w") as handle:
        handle["X"] = h5py.SoftLink("/nowhere")
        handle["y"] = np.zeros(3)
    with h5py.File(tmp / "huge.h5", "w") as handle:  # declared, never written: a tiny file
        handle.create_dataset("X", shape=(10 ** 10, 10), chunks=(1000, 10), dtype="f8")
        handle.create_dataset("y", shape=(10 ** 10,), chunks=(1000,), dtype="f8")
    rng = np.random.default_rng(1)
    X = rng.standard_normal((30, 2))
    with h5py.File(tmp / "column.h5", "w") as handle:
        handle["X"], handle["y"] = X, (X @ [1.0, 2.0])[:, None]
    before = snapshot(tmp)
    train = ["train", "--loss", "squared", "--max-iter", "50", "--quiet"]
    cases = [
        ({"args": ["train", d, "--loss", "logistic", "--out", d]}, "is the same file as the data file"),
        ({"args": ["predict", m, d], "env": {"PGD_PREDICT_OUT": m}}, "--out (from PGD_PREDICT_OUT)"),
        ({"args": ["data", "convert", files["csv"], files["csv"], "--from", "csv"]}, "is the same file"),
        ({"args": ["train", d, "--loss", "logistic", "--l2", "nan"]}, "'nan' is not a finite number"),
        ({"args": ["train", d, "--loss", "logistic", "--seed", "-1"]}, "-1 is not in the range x>=0"),
        ({"args": ["train", tmp / "cut.h5", *train[1:]]}, "cut.h5 is truncated"),
        ({"args": ["train", tmp / "links.h5", *train[1:]]}, "/X is a link to /nowhere, which does not exist"),
        ({"args": ["train", tmp / "huge.h5", *train[1:]]}, "rows need 4"),  # GiB: depends on the machine
    ]
    results = run_cases(2, [case for case, _ in cases] + [
        {"args": ["train", tmp / "column.h5", *train[1:], "--out", tmp / "col-model.h5"]}], tmp)
    for (case, fragment), result in zip(cases, results):
        line = assert_one_error_line(result, fragment)
        if "huge" in str(case["args"][1]):
            assert "use about" in line and "ranks on more nodes" in line and "--dtype float32" in line
    assert results[-1]["codes_by_rank"] == [0, 0], results[-1]["stderr"]
    w, b, _ = read_weights(tmp / "col-model.h5")
    np.testing.assert_allclose(w, [1.0, 2.0], atol=1e-3)
    after = snapshot(tmp)
    assert {name: after[name] for name in before} == before
    assert set(after) - set(before) == {"col-model.h5"}
