"""The process and the job, before and around MPI: launcher facts and BLAS threads (:mod:`.launcher`), node
topology (:mod:`.topology`), host memory (:mod:`.hostmem`), internal ``PGD_*`` settings (:mod:`.settings`) and
the test-only fault hooks (:mod:`.faults`).
"""
