"""Run under mpirun: parallel LIBSVM / CSV conversion writes the same bytes as one rank, and errors alike.

Usage: ``mpirun -n N python tests/spmd_sparse_convert_check.py SRC REFERENCE OUT [libsvm|csv]``. Every rank
converts SRC to OUT through mpi4py's communicator (small blocks, so each rank parses several); rank 0
compares OUT with REFERENCE (written by one rank beforehand) byte for byte. Then a copy of SRC with one bad
line must raise the same one-line InputError on every rank. Exits 1 on any mismatch, on every rank.
"""

import os
import sys

from mpi4py import MPI

from pgd.data.libsvm_convert import Collective, convert_libsvm
from pgd.data.sparse_csv_convert import convert_csv_parallel
from pgd.errors import InputError

FORMATS = {"libsvm": (convert_libsvm, b"1 7:oops", "bad feature '7:oops'"),
           "csv": (convert_csv_parallel, b"oops" + b",1" * 8, "column 1: 'oops' is not a number")}  # 9 columns


def main():
    src, reference, out = sys.argv[1:4]
    convert, bad_line, expected = FORMATS[sys.argv[4] if len(sys.argv) > 4 else "libsvm"]
    comm = MPI.COMM_WORLD
    group = Collective.from_comm(comm)
    summary = convert(src, out, collective=group, block_bytes=4096)
    same = True
    if group.rank == 0:
        with open(reference, "rb") as a, open(out, "rb") as b:
            same = a.read() == b.read()
        bad = out + ".bad" + os.path.splitext(src)[1]
        with open(src, "rb") as good, open(bad, "wb") as handle:
            lines = good.read().split(b"\n")
            lines[len(lines) * 3 // 4] = bad_line
            handle.write(b"\n".join(lines))
    bad = comm.bcast(out + ".bad" + os.path.splitext(src)[1] if group.rank == 0 else None)
    try:
        convert(bad, out + ".bad.h5", collective=group, block_bytes=4096)
        message = None
    except InputError as error:
        message = str(error)
    messages = comm.allgather(message)
    ok = comm.allreduce(int(same and summary["ranks"] == group.size), op=MPI.MIN)
    ok = ok and messages[0] is not None and expected in messages[0] and len(set(messages)) == 1
    ok = ok and not os.path.exists(out + ".bad.h5")
    if group.rank == 0:
        print(f"ranks {group.size}: identical bytes {same}; error on every rank: {messages[0]}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
