"""Run under mpirun: ``pgd ARGS`` with an unexpected exception injected on rank 1 after step 2.

The entry point must abort the whole job (exit code 1) instead of leaving rank 0 waiting in a collective.
"""

import sys

from mpi4py import MPI

import pgd.training.sync
from pgd.cli.entry import main


class _Failure:
    def after_step(self, iteration):
        if MPI.COMM_WORLD.Get_rank() == 1 and iteration == 2:
            raise RuntimeError("injected failure")


pgd.training.sync.LOOP_HOOKS.append(lambda cfg, world, optimizer: _Failure())
main(sys.argv[1:])
