"""What an OSError on an input file or directory means, in the words of our events.

Both the walk (a directory it cannot list) and the hasher (a file it cannot read) turn
an OSError into data: ``error.type`` for programs, ``error.message`` for people.
"""

from __future__ import annotations

import errno

from integrityd.events import ErrorType


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
