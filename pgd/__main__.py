"""``python -m pgd`` is the same as the ``pgd`` command."""

from pgd.cli.entry import main

if __name__ == "__main__":
    main()
