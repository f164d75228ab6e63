"""Under mpirun: the device communicators over real MPI with a fake device (NumPy standing for the GPU).

Prints one line per mode: ``MODE CLASS DECISION-PREFIX SUMS-OK``.
"""

import os
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(__file__))
from gpu_fakes import FakeOps  # noqa: E402

from pgd.comm.device import make_device_communicator  # noqa: E402
from pgd.device.backend import Backend  # noqa: E402

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
backend = Backend(name="fake", xp=np, device="gpu", device_id=0, description="fake")
for mode in ("off", "on", "auto"):
    ops = FakeOps()
    comm = make_device_communicator("allreduce", world, backend, mode, ops=ops)
    buf = ops.empty(5, np.float64)
    buf.view(np.ndarray)[...] = np.arange(5) * (rank + 1)
    comm.allreduce(buf)
    ok = np.array_equal(buf.view(np.ndarray), np.arange(5) * size * (size + 1) / 2)
    if rank == 0:
        print(mode, type(comm).__name__, comm.cuda_aware.split(" (")[0], ok, flush=True)
