"""A file that could not be verified, or is not there: states, and what an OSError means.

Both the walk (a directory it cannot list) and the hasher (a file it cannot read) turn
an OSError into data: ``error.type`` for programs, ``error.message`` for people.
"""

from __future__ import annotations

import errno

from integrityd.messages import ErrorType, FileState


def error_type(e: OSError) -> ErrorType:
    """``permission``, ``io`` (the device failed: EIO), or ``os`` for anything else."""
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission"
    if e.errno == errno.EIO:
        return "io"
    return "os"


def describe(e: OSError) -> str:
    """The system's own words ("Permission denied"): ``error.type`` says the kind already."""
    return e.strerror or str(e)


def missing(path: bytes) -> FileState:
    """The file vanished between the walk and the hashing: it is simply not there."""
    return FileState(path, "missing", 0, 0, 0, 0, 0, 0, 0, None, None)


def failed(path: bytes, error_type: ErrorType, error: str) -> FileState:
    """A file that could not be verified; it keeps its baseline entry."""
    return FileState(
        path, "unknown", 0, 0, 0, 0, 0, 0, 0, None, None, error_type=error_type, error=error
    )
