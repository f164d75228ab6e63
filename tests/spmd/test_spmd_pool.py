"""The pool that serves the SPMD tests (``tests/support/spmd_server.py``) gives what ``mpirun -n k`` gives: a
world of ``k`` ranks with the launcher's variables saying so, every rank's output, the exit code, an abort that
ends the job (and a fresh pool after it), and the fake CuPy only for the commands that ask for it."""

from __future__ import annotations

import json
import textwrap

import pytest

from support import mpi

pytestmark = pytest.mark.mpi

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    action = sys.argv[1]
    if action == "raise" and world.Get_rank() == 1:
        raise RuntimeError("rank 1 fails")
    if action == "exit":
        sys.exit(3)
    try:
        import cupy
        gpu = cupy.cuda.runtime.getDeviceCount()
    except ImportError:
        gpu = None
    facts = {"rank": world.Get_rank(), "size": world.Get_size(), "sum": world.allreduce(world.Get_rank() + 1),
             "env_size": os.environ["OMPI_COMM_WORLD_SIZE"], "gpu": gpu, "flag": os.environ.get("PGD_POOL_FLAG")}
    print("FACTS " + json.dumps(facts), flush=True)
""")


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "pool_check.py"
    path.write_text(SCRIPT)
    return str(path)


def _facts(done) -> list[dict]:
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line[6:]) for line in done.stdout.splitlines() if line.startswith("FACTS ")]


def test_the_pool_serves_the_spmd_tests():
    assert mpi.SERVER is not None and mpi.SERVER.serves(3, None) and mpi.SERVER.serves(2, {"PGD_X": "1"})
    assert not mpi.SERVER.serves(2, {"OMPI_MCA_btl": "self"}) and not mpi.SERVER.serves(mpi.SERVER.size + 1, None)


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_a_job_sees_a_world_of_its_ranks(script, ranks):
    facts = _facts(mpi.run_python(ranks, script, "facts", env={"PGD_POOL_FLAG": "on"}))
    assert [fact["rank"] for fact in facts] == list(range(ranks))
    assert {(fact["size"], fact["sum"], fact["env_size"], fact["flag"]) for fact in facts} == {
        (ranks, ranks * (ranks + 1) // 2, str(ranks), "on")}
    assert _facts(mpi.run_python(ranks, script, "facts"))[0]["flag"] is None      # the variable went with the job


def test_exit_codes_aborts_and_the_fake_cupy(script):
    assert mpi.run_python(2, script, "exit").returncode == 3
    aborted = mpi.run_python(2, script, "raise")
    assert aborted.returncode != 0 and "rank 1 fails" in aborted.stderr
    assert [fact["gpu"] for fact in _facts(mpi.run_python(2, script, "facts", env=mpi.fake_cupy_env()))] == [1, 1]
    assert [fact["gpu"] for fact in _facts(mpi.run_python(2, script, "facts"))] == [None, None]
