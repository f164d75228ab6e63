"""How ranks combine buffers: host MPI communicators and collective error agreement (:mod:`.host`), device
buffers staged or CUDA-aware and NCCL (:mod:`.device`), and the CUDA-aware decision (:mod:`.cuda_aware`).
"""
