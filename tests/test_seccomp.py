"""Under a seccomp filter like systemd's SystemCallFilter=~@resources: warnings, no deaths.

A small launcher installs a real seccomp filter (setpriority and ioprio_set answer
EPERM, as they do under the units) and then runs integrityd; the filter holds for
every process it starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import findings, integrityd

LAUNCHER = r"""
import ctypes, os, struct, sys
SETPRIORITY, IOPRIO_SET, AUDIT_ARCH_X86_64 = 141, 251, 0xC000003E
def insn(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)
ERRNO_EPERM, ALLOW = 0x00050000 | 1, 0x7FFF0000
prog = b"".join([
    insn(0x20, 0, 0, 4),                         # A = arch
    insn(0x15, 1, 0, AUDIT_ARCH_X86_64),         # x86_64: go on; else allow
    insn(0x06, 0, 0, ALLOW),
    insn(0x20, 0, 0, 0),                         # A = syscall number
    insn(0x15, 0, 1, SETPRIORITY), insn(0x06, 0, 0, ERRNO_EPERM),
    insn(0x15, 0, 1, IOPRIO_SET), insn(0x06, 0, 0, ERRNO_EPERM),
    insn(0x06, 0, 0, ALLOW),
])
buf = ctypes.create_string_buffer(prog)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0                    # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # PR_SET_SECCOMP, FILTER
try:
    os.nice(1)
except PermissionError:
    pass
else:
    sys.exit("the filter did not take")
os.execv(sys.executable, [sys.executable, "-m", "integrityd", *sys.argv[1:]])
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the filter uses x86_64 numbers")
def test_idle_io_refused_is_a_warning_and_every_file_is_verified(
    tree: Path, manifest: Path
) -> None:
    """A verify --idle-io under the filter: exit 0, every file verified, a warning."""
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    r = subprocess.run(
        [sys.executable, "-c", LAUNCHER, "verify", "--json", "--idle-io", "-m", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (r.returncode, findings(r)) == (0, []), r.stderr
    assert "idle_priority_unavailable" in r.stderr
    assert "worker_died" not in r.stderr and "Traceback" not in r.stderr
