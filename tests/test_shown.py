r"""Text reports show what an intruder wrote, escaped: it cannot steer the terminal.

An ESC sequence in an SELinux label, an xattr's name, a package's version or a user
name would otherwise reach the terminal raw: "\x1b[2K\x1b[1A" erases the line above,
and a run of them writes a clean report over the findings.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from integrityd.shown import visible

from .conftest import integrityd

ERASE_UP = "\x1b[2K\x1b[1A"


def test_visible_escapes_what_does_not_show_as_itself() -> None:
    assert visible("plain text → ok, é") == "plain text → ok, é"
    assert visible(f"a{ERASE_UP}b") == "a\\x1b[2K\\x1b[1Ab"
    assert visible("line\nforged\rover\t") == "line\\x0aforged\\x0dover\\x09"
    assert visible("c1\x9b31m") == "c1\\xc2\\x9b31m"  # CSI as a C1 character
    assert visible("invoice\u202efdp.exe") == "invoice\\xe2\\x80\\xaefdp.exe"
    assert visible("zero\u200bwidth") == "zero\\xe2\\x80\\x8bwidth"
    assert visible("byte\udcff") == "byte\\xff"  # an undecodable byte, as surrogateescape keeps it


def test_a_label_and_an_xattr_name_reach_the_report_escaped(tmp_path: Path, manifest: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "labelled").write_bytes(b"a")
    (root / "named").write_bytes(b"b")
    assert integrityd("init", "-m", manifest, root).returncode == 0
    try:
        os.setxattr(root / "labelled", "security.selinux", f"{ERASE_UP * 3}ok_t\0".encode())
        os.setxattr(root / "named", f"user.{ERASE_UP}x", b"1")
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            pytest.skip(f"the filesystem under {tmp_path} takes no such xattrs")
        raise
    r = integrityd("check", "-m", manifest)
    assert r.returncode == 4, r.stderr
    assert "\x1b" not in r.stdout
    shown = "\\x1b[2K\\x1b[1A"
    assert f"{'':13}selinux  (none) → {shown * 3}ok_t" in r.stdout.splitlines()
    assert f'{"":13}xattrs   (none) → user.{shown}x="1"' in r.stdout.splitlines()


def test_the_change_log_shows_a_forged_sudo_user_escaped(tmp_path: Path, manifest: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    env = dict(os.environ, SUDO_USER=f"admin{ERASE_UP}")
    assert integrityd("init", "-m", manifest, root, env=env).returncode == 0
    r = integrityd("log", "-m", manifest)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout
    assert "(sudo from admin\\x1b[2K\\x1b[1A)" in r.stdout
