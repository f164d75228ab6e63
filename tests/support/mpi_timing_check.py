"""Run under mpirun: the summary's timing split (:func:`pgd.training.summary.timing_over_ranks`) on
made-up seconds per rank; prints one JSON line per rank."""

import json

from mpi4py import MPI

from pgd.outputs.progress import format_summary
from pgd.training.summary import timing_over_ranks

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
# Rank 1 computes longest (5 s); the others wait for it, and count the wait as communication.
compute = 5.0 if rank == 1 else 2.0 + rank * 0.5
comm = 10.0 - compute - 0.25 - 0.5 * (rank == 1)
split = timing_over_ranks(world, 10.0 + 0.1 * rank, compute, comm, steps=4, setup=1.5)
summary = {"loss": "squared", "ranks": size, "device": "cpu", "communicator": "allreduce", "dtype": "float64",
           "optimizer": "gd", "data": "x.h5", "n": 10, "d": 2, "iterations": 4, "stop_reason": "budget",
           "final_loss": 1.0, "grad_norm": 0.1, "lr": 0.1, "lr_auto": False, "timing": split,
           "comm_bytes_per_iteration": 24, "warnings": []}
wall_line = next(line for line in format_summary(summary).splitlines() if line.strip().startswith("wall"))
print(json.dumps({"rank": rank, "split": split, "line": wall_line}), flush=True)
