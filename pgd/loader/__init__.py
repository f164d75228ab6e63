"""A rank's slab, read and validated collectively: in host memory (:mod:`.host`) or on its GPU (:mod:`.device`).
"""
