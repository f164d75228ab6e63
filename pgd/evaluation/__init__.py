"""Evaluate and predict with a saved model (:mod:`.apply`), with metrics computed over the ranks (:mod:`.metrics`).
"""
