"""integrityd: a file-integrity checker for Linux."""

__version__ = "0.1.0"
