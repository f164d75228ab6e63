"""Benchmark code behind ``pgd bench`` (no click here: the commands are in :mod:`pgd.cli.bench`).
"""
