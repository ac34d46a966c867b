"""Entry point for ``python -m integrityd``."""

from integrityd.cli import entry

# The guard matters: multiprocessing re-imports the main module in its children.
if __name__ == "__main__":
    entry()
