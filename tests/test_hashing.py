"""hash worker logic on real files: digests match hashlib; special files are never opened."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from integrityd.exclude import Excluder
from integrityd.hashing import SETTLE_NS, Hasher, from_stat, settled_before
from integrityd.messages import HINT_FILE, HINT_OTHER
from integrityd.walk import list_dir

CHUNK = 4096


# A threshold every file's ctime lies before: the settled way, whatever the filesystem.
SETTLED = 1 << 62
READS = pytest.mark.parametrize("settled", [None, SETTLED], ids=["careful", "settled"])


@READS
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7])
def test_digest_matches_hashlib_at_chunk_boundaries(
    tmp_path: Path, size: int, settled: int | None
) -> None:
    """Sizes around the chunk size hash exactly like hashlib over the whole content."""
    data = os.urandom(size)
    f = tmp_path / "f"
    f.write_bytes(data)
    s = Hasher(CHUNK).state(os.fsencode(f), HINT_FILE, settled_before=settled)
    assert s == from_stat(os.fsencode(f), f.stat(), hashlib.sha256(data).digest())
    assert (s.type, s.size, s.error_type) == ("file", size, None)


@READS
@pytest.mark.parametrize("size", [CHUNK - 1, CHUNK, 2 * CHUNK + 1])
def test_large_file_is_deferred_unread(tmp_path: Path, size: int, settled: int | None) -> None:
    """Above ``defer_above`` the state is None (its own task); at the limit it is hashed."""
    f = tmp_path / "f"
    f.write_bytes(os.urandom(size))
    h = Hasher(CHUNK)
    assert h.state(os.fsencode(f), HINT_FILE, size - 1, None, settled) is None
    s = h.state(os.fsencode(f), HINT_FILE, size, None, settled)
    assert s is not None
    assert s.sha256 == hashlib.sha256(f.read_bytes()).digest()


def test_settled_only_where_the_kernel_stamps_files(tmp_path: Path) -> None:
    """Not procfs, but tmpfs; the threshold lies SETTLE_NS before now."""
    h = Hasher(CHUNK)
    assert not h.trusts_clock(b"/proc/self")
    fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert not h.trusts_clock(fd)
    finally:
        os.close(fd)
    assert not h.trusts_clock(os.fsencode(tmp_path / "does-not-exist"))
    if os.path.ismount("/dev/shm"):
        assert h.trusts_clock(b"/dev/shm")
    before = time.time_ns()
    threshold = settled_before()
    assert before - SETTLE_NS <= threshold <= time.time_ns() - SETTLE_NS


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=5 * CHUNK))
def test_digest_property(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    """For any content the worker's digest equals hashlib's."""
    f = tmp_path_factory.mktemp("h") / "f"
    f.write_bytes(data)
    assert Hasher(CHUNK).state(os.fsencode(f), HINT_FILE).sha256 == hashlib.sha256(data).digest()


@READS
def test_fifo_swapped_in_is_never_read(tmp_path: Path, settled: int | None) -> None:
    """A FIFO swapped in for a file is recorded by type and never blocks the worker.

    pread() is refused on a pipe: the data waiting in it stays there for its real reader.
    """
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    s = Hasher(CHUNK).state(os.fsencode(fifo), HINT_FILE, settled_before=settled)
    assert (s.type, s.sha256, s.error_type) == ("fifo", None, None)
    both_ends = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # Linux: opens without a peer
    try:
        os.write(both_ends, b"for somebody else")
        s = Hasher(CHUNK).state(os.fsencode(fifo), HINT_FILE, settled_before=settled)
        assert (s.type, s.sha256, s.error_type) == ("fifo", None, None)
        assert os.read(both_ends, 100) == b"for somebody else"
    finally:
        os.close(both_ends)


def test_socket_and_symlinks(tmp_path: Path) -> None:
    """Sockets by type; symlinks (dangling, looping) by target, never followed."""
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s"))
    sock.close()
    (tmp_path / "dangling").symlink_to("/does/not/exist")
    (tmp_path / "l1").symlink_to("l2")
    (tmp_path / "l2").symlink_to("l1")
    h = Hasher(CHUNK)
    assert h.state(os.fsencode(tmp_path / "s"), HINT_OTHER).type == "socket"
    d = h.state(os.fsencode(tmp_path / "dangling"), HINT_OTHER)
    assert (d.type, d.target) == ("symlink", b"/does/not/exist")
    # Hinted as a file (it changed since the walk): O_NOFOLLOW refuses, lstat describes it.
    loop = h.state(os.fsencode(tmp_path / "l1"), HINT_FILE)
    assert (loop.type, loop.target, loop.error_type) == ("symlink", b"l2", None)


def test_vanished_file_is_missing(tmp_path: Path) -> None:
    """A file removed between walk and hash is reported as missing, not as an error."""
    s = Hasher(CHUNK).state(os.fsencode(tmp_path / "gone"), HINT_FILE)
    assert (s.type, s.error_type) == ("missing", None)


def test_unreadable_file_becomes_data(tmp_path: Path) -> None:
    """An open() failure becomes an error_type on the state, never an exception."""
    s = Hasher(CHUNK).state(os.fsencode(tmp_path / "dir" / "x"), HINT_FILE)
    assert s.type == "missing"
    d = tmp_path / "notadir"
    d.write_text("x")
    s = Hasher(CHUNK).state(os.fsencode(d / "child"), HINT_FILE)
    assert (s.error_type, s.error) == ("os", "Not a directory")  # the type says the kind


def test_entries_are_read_in_the_directory_that_was_listed(tmp_path: Path) -> None:
    """A directory swapped after its listing (renamed, a symlink put there) changes nothing.

    Entries are opened relative to the directory that was listed.
    """
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"listed")
    (tree / "ln").symlink_to("f")
    listing = list_dir(os.fsencode(tree), os.fsencode(tmp_path), Excluder([]), frozenset(), None)
    assert listing.fd is not None
    try:
        tree.rename(tmp_path / "moved")
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "f").write_bytes(b"swapped in")
        tree.symlink_to("elsewhere")
        h = Hasher(CHUNK)
        states = {
            name: h.state(path, hint, 1 << 20, (listing.fd, name))
            for name, path, hint in listing.entries
        }
    finally:
        os.close(listing.fd)
    assert states[b"f"] is not None
    assert states[b"f"].path == os.fsencode(tree / "f")
    assert states[b"f"].sha256 == hashlib.sha256(b"listed").digest()
    assert states[b"ln"] is not None
    assert (states[b"ln"].type, states[b"ln"].target) == ("symlink", b"f")
    # The path is now a symlink to a directory: listed as empty, never followed.
    again = list_dir(os.fsencode(tree), os.fsencode(tmp_path), Excluder([]), frozenset(), None)
    assert (again.entries, again.subdirs, again.error, again.fd) == ([], [], None, None)
