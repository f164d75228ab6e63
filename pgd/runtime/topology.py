"""Where a rank sits: the ranks sharing its node (one answer for GPU binding, ``--mode shm``, ``pgd info``
and the benchmarks).

Conventions
-----------
A node is ``Split_type(COMM_TYPE_SHARED)`` of the world: the ranks that can share memory.  Functions that
return a communicator leave freeing it to the caller; the others free what they create.  Every function
is collective over ``world``.
"""

from __future__ import annotations

from mpi4py import MPI

from pgd.runtime import settings


def node_local_rank(world) -> tuple[int, int]:
    """This rank's index among the ranks on its node, and how many ranks share the node."""
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_rank(), node.Get_size()
    finally:
        node.Free()


def node_communicator(world):
    """The ranks sharing this rank's memory (or a simulated node of ``PGD_SHM_NODE_RANKS`` ranks)."""
    simulated = settings.shm_node_ranks()
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    if simulated > 0:
        split = node.Split(node.Get_rank() // simulated, node.Get_rank())
        node.Free()
        node = split
    return node


def node_layout(world) -> tuple[int, int]:
    """``(ranks on the fullest node, number of nodes)``, the same on every rank."""
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        ranks_per_node = world.allreduce(node.Get_size(), op=MPI.MAX)
        nodes = world.allreduce(int(node.Get_rank() == 0), op=MPI.SUM)
    finally:
        node.Free()
    return ranks_per_node, nodes


def mpi_library() -> str:
    """The first line of ``MPI_Get_library_version`` (which MPI this is, for summaries and ``pgd info``)."""
    return MPI.Get_library_version().replace("\x00", "").splitlines()[0].strip()
