"""One ``pgd train`` run: the synchronous loop (:mod:`.sync`), the runners with loops of their own (async,
shm, local SGD; chosen in :mod:`.modes`), their shared mini-batch support, loop hooks and preemption.
"""
