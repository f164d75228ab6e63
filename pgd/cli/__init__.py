"""The command line: the only package that defines click commands; :func:`pgd.cli.entry.main` is the entry point.

Nothing is imported here, so ``pgd --help`` loads only what the entry point needs.
"""
