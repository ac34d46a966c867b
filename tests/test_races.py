"""Names swapped while they are read: every answer is true of some moment, never a mix.

Another process swaps a regular file and a symlink under one name with renameat2's
RENAME_EXCHANGE (atomic: the name is always one of the two) as fast as it can, while
the hasher describes the name again and again, with either hint the walk could have
given. Each answer must be the file with its digest, the symlink with its target, or
``changing``; a regular file without a digest is what made ``check`` report an
unchanged file ``corrupted``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from integrityd.hashing import Hasher
from integrityd.messages import HINT_FILE, HINT_OTHER

SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
RENAMEAT2 = {"x86_64": 316, "aarch64": 276}[os.uname().machine]
AT_FDCWD, RENAME_EXCHANGE = -100, 2
a, b, seconds = sys.argv[1].encode(), sys.argv[2].encode(), float(sys.argv[3])
print("swapping", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    if libc.syscall(RENAMEAT2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) != 0:
        sys.exit(ctypes.get_errno())
"""


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="renameat2 number")
def test_a_name_swapped_between_file_and_symlink_never_reads_as_changed_content(
    tmp_path: Path,
) -> None:
    """20,000 looks at a name being swapped: no regular file ever comes back unread."""
    data = b"the same content all along\n" * 100
    name = tmp_path / "f"
    other = tmp_path / "other"
    name.write_bytes(data)
    other.symlink_to("/etc/passwd")
    digest = hashlib.sha256(data).digest()
    swapper = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(name), str(other), "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert swapper.stdout is not None and swapper.stdout.readline() == "swapping\n"
        hasher = Hasher(1 << 16)
        path = os.fsencode(name)
        seen: dict[str, int] = {}
        deadline = time.monotonic() + 30
        for i in range(20_000):
            if time.monotonic() > deadline:
                break
            hint = HINT_FILE if i % 2 else HINT_OTHER
            s = hasher.state(path, hint, extra=bool(i % 3))
            if s.type == "file" and s.error_type is None:
                assert s.sha256 == digest, s
                seen["file"] = seen.get("file", 0) + 1
            elif s.type == "symlink":
                assert (s.target, s.sha256) == (b"/etc/passwd", None), s
                seen["symlink"] = seen.get("symlink", 0) + 1
            else:
                assert (s.error_type, s.sha256) == ("changing", None), s
                seen["changing"] = seen.get("changing", 0) + 1
        assert seen.get("file") and seen.get("symlink"), seen  # the swap really raced us
    finally:
        swapper.kill()
        swapper.wait()
        if swapper.stdout is not None:
            swapper.stdout.close()
