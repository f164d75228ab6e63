"""Run under mpirun: parallel LIBSVM conversion writes the same bytes as one rank, and errors alike.

Usage: ``mpirun -n N python tests/spmd_sparse_convert_check.py SRC REFERENCE OUT``. Every rank converts
SRC to OUT through mpi4py's communicator (small blocks, so each rank parses several); rank 0 compares OUT
with REFERENCE (written by one rank beforehand) byte for byte. Then a malformed copy of SRC must raise
the same one-line InputError on every rank. Exits 1 on any mismatch, on every rank.
"""

import os
import sys

from mpi4py import MPI

from pgd.data.libsvm_convert import Collective, convert_libsvm
from pgd.errors import InputError


def main():
    src, reference, out = sys.argv[1:4]
    comm = MPI.COMM_WORLD
    group = Collective.from_comm(comm)
    summary = convert_libsvm(src, out, collective=group, block_bytes=4096)
    same = True
    if group.rank == 0:
        with open(reference, "rb") as a, open(out, "rb") as b:
            same = a.read() == b.read()
        bad = out + ".bad.svm"
        with open(src, "rb") as good, open(bad, "wb") as handle:
            lines = good.read().split(b"\n")
            lines[len(lines) * 3 // 4] = b"1 7:oops"
            handle.write(b"\n".join(lines))
    bad = comm.bcast(out + ".bad.svm" if group.rank == 0 else None)
    try:
        convert_libsvm(bad, out + ".bad.h5", collective=group, block_bytes=4096)
        message = None
    except InputError as error:
        message = str(error)
    messages = comm.allgather(message)
    ok = comm.allreduce(int(same and summary["ranks"] == group.size), op=MPI.MIN)
    ok = ok and messages[0] is not None and "bad feature '7:oops'" in messages[0] and len(set(messages)) == 1
    ok = ok and not os.path.exists(out + ".bad.h5")
    if group.rank == 0:
        print(f"ranks {group.size}: identical bytes {same}; error on every rank: {messages[0]}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
