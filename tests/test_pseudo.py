"""Filesystems the kernel makes up as read: recorded, never entered, never read for ever."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import pytest

from integrityd.hashing import Hasher
from integrityd.messages import HINT_FILE

from .conftest import can_mount, findings, in_mount_namespace, integrityd


def test_a_file_that_yields_data_past_its_size_is_not_read_for_ever() -> None:
    """/proc/self/pagemap says 0 bytes and yields terabytes: read a chunk past 0, `changing`."""
    started = time.monotonic()
    s = Hasher(1 << 16).state(b"/proc/self/pagemap", HINT_FILE)
    assert time.monotonic() - started < 5
    assert (s.type, s.error_type, s.sha256) == ("unknown", "changing", None)


def test_proc_given_as_a_root_is_recorded_and_not_entered(tmp_path: Path) -> None:
    """The root /proc: one entry, one warning naming the filesystem, exit 0, in seconds."""
    manifest = tmp_path / "m.db"
    r = integrityd("init", "--json", "-m", manifest, "/proc", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count('"event": "pseudo_filesystem"') == 1, r.stderr
    assert '"filesystem": "proc"' in r.stderr
    r = integrityd("check", "--json", "-m", manifest, timeout=60)
    assert (r.returncode, findings(r)) == (0, []), r.stdout


@pytest.mark.skipif(not can_mount(), reason="needs a mount namespace (root)")
def test_proc_mounted_inside_a_root_that_crosses_filesystems(tmp_path: Path) -> None:
    """A fresh proc inside a root with one_filesystem: false: only its mount point.

    Nothing below it is read, and the runs end at once.
    """
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "a.txt").write_text("a\n")
    manifest = tmp_path / "m.db"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"manifest: {manifest}\nroots:\n  - path: {root}\n    one_filesystem: false\n"
    )
    python = f"{sys.executable} -m integrityd"
    script = (
        f"mount -t proc proc {root}/proc && {python} init --json -c {config} && "
        f"{python} check --json -c {config}"
    )
    r = in_mount_namespace(script, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count('"event": "pseudo_filesystem"') == 2, r.stderr  # once per run
    assert f'"path": "{root}/proc"' in r.stderr
    with sqlite3.connect(manifest) as conn:
        names = sorted(n for (n,) in conn.execute("SELECT name FROM files"))
    conn.close()
    assert names == [b"a.txt", b"proc", b"root"]  # the root, the mount point, nothing below
