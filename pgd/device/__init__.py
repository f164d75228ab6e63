"""Where arrays live and what runs there: the NumPy/CuPy :class:`~pgd.device.backend.Backend`, the device
operations the GPU path needs (:mod:`.ops`) and the CUDA kernels with their NumPy models (:mod:`.kernels`).
"""
