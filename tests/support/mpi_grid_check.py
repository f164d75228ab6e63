"""Run several ``pgd`` commands in one MPI launch (for tests/test_grid.py).

Usage: ``mpirun -n N python mpi_grid_check.py RUNS.json RESULTS.json``. RUNS.json is a list of
``{"name": ..., "args": [...]}``; rank 0 writes ``{name: {"error": message or None}}`` and prints
``=== name`` to stderr before each run, so warnings can be attributed to their run. Replicas are checked
after every step.
"""

import json
import os
import sys

from mpi4py import MPI

from pgd.cli.app import cli
from pgd.errors import PgdError


def main(runs_path: str, results_path: str) -> None:
    os.environ["PGD_CHECK_REPLICAS"] = "1"  # bitwise replica check after every step (within replica groups)
    world = MPI.COMM_WORLD
    with open(runs_path, encoding="utf-8") as handle:
        runs = json.load(handle)
    results = {}
    for run in runs:
        if world.Get_rank() == 0:
            print(f"=== {run['name']}", file=sys.stderr, flush=True)
        world.Barrier()
        try:
            cli.main(args=[str(arg) for arg in run["args"]], prog_name="pgd", standalone_mode=False)
            results[run["name"]] = {"error": None}
        except PgdError as error:
            results[run["name"]] = {"error": str(error)}
        sys.stderr.flush()
        world.Barrier()
    if world.Get_rank() == 0:
        with open(results_path, "w", encoding="utf-8") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
