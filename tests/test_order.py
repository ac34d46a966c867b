"""A root limited to one reader (a spinning disk) reads a directory's files in inode order.

The order is observed as the kernel sees it: inotify's IN_OPEN events on the directory,
one per open, in the order the opens happened.
"""

from __future__ import annotations

import ctypes
import os
import random
import struct
from pathlib import Path

import pytest

from integrityd.scan import HUGE_DIR

from .conftest import integrityd

_IN_OPEN = 0x20
_EVENT = struct.Struct("iIII")  # struct inotify_event, before its name


class Opens:
    """The names opened in one directory, in order, from the moment this is made."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        wd = libc.inotify_add_watch(self.fd, os.fsencode(directory), _IN_OPEN)
        assert wd >= 0, os.strerror(ctypes.get_errno())

    def names(self) -> list[str]:
        """Every name opened so far (the directory's own opens have none)."""
        out: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                os.close(self.fd)
                return out
            offset = 0
            while offset < len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                assert mask & 0x4000 == 0, "IN_Q_OVERFLOW: events were lost"
                name = data[offset + _EVENT.size : offset + _EVENT.size + length]
                offset += _EVENT.size + length
                if name.rstrip(b"\0"):
                    out.append(os.fsdecode(name.rstrip(b"\0")))


def shuffled_files(directory: Path, count: int) -> None:
    """``count`` files made in a shuffled order: name, inode and listing orders differ."""
    directory.mkdir()
    names = [f"f{i:05d}" for i in range(count)]
    random.Random(7).shuffle(names)
    for name in names:
        (directory / name).write_bytes(name.encode())


def by_inode(directory: Path, names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: os.stat(directory / n).st_ino)


def config(tmp_path: Path, manifest: Path, root: Path, workers: int | None) -> Path:
    """One root; no reading ahead, whose threads open the files too (only where cold)."""
    cfg = tmp_path / "c.yaml"
    limit = f"    workers: {workers}\n" if workers else ""
    cfg.write_text(f"manifest: {manifest}\nio_depth: 0\nroots:\n  - path: {root}\n{limit}")
    return cfg


@pytest.mark.parametrize("command", ["check", "verify"])
def test_a_root_with_one_reader_reads_in_inode_order(
    tmp_path: Path, manifest: Path, command: str
) -> None:
    """A walk of the directory (check) and the baseline's batches (verify): inode order."""
    root = tmp_path / "disk"
    shuffled_files(root, 40)
    listed = os.listdir(root)
    inode_order = by_inode(root, listed)
    assert listed != inode_order  # else this test could not fail
    assert sorted(listed) != inode_order  # verify's batches come in path order
    cfg = config(tmp_path, manifest, root, workers=1)
    assert integrityd("init", "-c", cfg).returncode == 0
    opens = Opens(root)
    r = integrityd(command, "-c", cfg, "-j", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert opens.names() == inode_order


def test_a_root_without_a_limit_keeps_the_listing_order(tmp_path: Path, manifest: Path) -> None:
    """Sorting costs nothing that a fast disk would pay back: only a limited root sorts."""
    root = tmp_path / "ssd"
    shuffled_files(root, 40)
    listed = os.listdir(root)
    cfg = config(tmp_path, manifest, root, workers=None)
    assert integrityd("init", "-c", cfg).returncode == 0
    opens = Opens(root)
    r = integrityd("check", "-c", cfg, "-j", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert opens.names() == listed


def test_a_huge_directory_is_read_in_inode_order_a_batch_at_a_time(
    tmp_path: Path, manifest: Path
) -> None:
    """Past HUGE_DIR entries the listing is read in batches: each batch sorted."""
    root = tmp_path / "huge"
    shuffled_files(root, HUGE_DIR + 300)
    listed = os.listdir(root)
    batch = HUGE_DIR + 1  # what list_dir reads before it hands the rest to ``more``
    expected = by_inode(root, listed[:batch]) + by_inode(root, listed[batch:])
    assert expected != by_inode(root, listed)  # the batches show
    cfg = config(tmp_path, manifest, root, workers=1)
    assert integrityd("init", "-c", cfg).returncode == 0
    opens = Opens(root)
    r = integrityd("check", "-c", cfg, "-j", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert opens.names() == expected
