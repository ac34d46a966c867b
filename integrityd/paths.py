"""Absolute paths as bytes: which root holds one, and how the manifest keys it.

Paths are bytes (names need not be UTF-8). The helpers here are shared by the walk, the
manifest, the daemon's routing and the interchange formats, below all of them.
"""

from __future__ import annotations

import os


def covers(root: bytes, path: bytes) -> bool:
    """True if ``path`` is ``root`` or lies below it."""
    return path == root or path.startswith(root.rstrip(b"/") + b"/")


def relative(root: bytes, path: bytes) -> bytes:
    """``path`` relative to ``root``, without a leading slash; root itself is ``b""``."""
    return path[len(root.rstrip(b"/")) + 1 :]


def split(path: bytes) -> tuple[bytes, bytes]:
    """(parent, name) of an absolute, normalised path; ``/`` itself is (``""``, ``/``).

    ``/`` has no parent: stored under its own name as a child of ``/`` (as schema 1 did,
    with the name ``""``), it was listed among its own entries and read as removed.
    """
    if path == b"/":
        return b"", b"/"
    parent, name = os.path.split(path)
    return parent, name


def join(parent: bytes, name: bytes) -> bytes:
    """Inverse of ``split``."""
    if not parent:
        return name
    return parent.rstrip(b"/") + b"/" + name


def resolved_keeping_name(path: str) -> bytes:
    """``path`` absolute, its directories resolved, its last name kept as given.

    For the manifest: a symlink in its directories is the system's business, but one at
    the manifest's own name must be seen (and refused), not followed.
    """
    head, name = os.path.split(os.path.abspath(os.path.expanduser(path)))
    return os.fsencode(os.path.join(os.path.realpath(head), name))
