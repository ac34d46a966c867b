"""Reading ahead on cold storage: the page cache fills before the worker reads.

And nothing about a run's findings changes.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import threading
from pathlib import Path

import pytest

from integrityd.hashing import Hasher
from integrityd.messages import HINT_FILE
from integrityd.prefetch import STREAM_AHEAD, STREAM_STEP, Prefetcher, Streamer, cold

from .conftest import findings, integrityd, wait_for

ROOT = os.geteuid() == 0


def drop_caches() -> None:
    """Write dirty pages out, then drop the clean ones: every file reads cold."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:  # a container's read-only /proc/sys, say
        pytest.skip(f"cannot drop the page cache here: {e.strerror}")


@pytest.mark.skipif(not ROOT, reason="dropping the page cache needs root")
def test_a_file_read_ahead_is_in_the_page_cache(tmp_path: Path) -> None:
    """A dropped file reads as cold; after ahead() every one reaches the cache, soon.

    POSIX_FADV_WILLNEED starts the reads and returns: a file whose read is still under
    way when wait() returns reads as cold for a moment (it failed that way once in a
    full run here), so the test waits for the cache with a deadline. A file that was
    not asked for stays cold: what fills the cache is the reading ahead.
    """
    (tmp_path / "not-asked").write_bytes(os.urandom(8192))
    for i in range(32):
        (tmp_path / f"f{i}").write_bytes(os.urandom(8192))
    drop_caches()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    prefetch = Prefetcher(4, 1 << 16)
    try:
        names = [f"f{i}".encode() for i in range(32)]
        if not cold(fd, names[0]):
            pytest.skip("this filesystem cannot tell a cold page (RWF_NOWAIT)")
        prefetch.ahead(fd, names)
        prefetch.wait()
        wait_for(lambda: not [n for n in names if cold(fd, n)], 10, "every file in the cache")
        assert cold(fd, b"not-asked")
    finally:
        prefetch.close()
        os.close(fd)


def test_cold_says_false_for_a_warm_file_and_a_missing_one(tmp_path: Path) -> None:
    """A file just written is in the cache; a name that is not there is not 'cold'."""
    (tmp_path / "warm").write_bytes(b"x" * 100)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert not cold(fd, b"warm")
        assert not cold(fd, b"missing")
    finally:
        os.close(fd)


@pytest.mark.skipif(not ROOT, reason="dropping the page cache needs root")
@pytest.mark.parametrize("depth", [0, 8])
def test_a_cold_check_finds_the_same_with_or_without_reading_ahead(
    tmp_path: Path, depth: int
) -> None:
    """Cold, with 64 files in a directory: the exact same findings and exit code."""
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    for i in range(64):
        (root / "d" / f"f{i:02d}").write_bytes(b"%d\n" % i * 100)
    manifest = tmp_path / "m.db"
    config = tmp_path / "c.yaml"
    config.write_text(f"manifest: {manifest}\nio_depth: {depth}\nroots:\n  - path: {root}\n")
    assert integrityd("init", "-c", config).returncode == 0
    (root / "d" / "f07").write_bytes(b"changed\n")
    (root / "d" / "f50").unlink()
    drop_caches()
    r = integrityd("check", "--json", "-c", config)
    assert (r.returncode, sorted(findings(r))) == (
        6,
        [("modified", str(root / "d" / "f07")), ("removed", str(root / "d" / "f50"))],
    )


def test_io_depth_is_validated(tmp_path: Path) -> None:
    """io_depth: a number from 0 to 64, named by file:line when it is not."""
    config = tmp_path / "c.yaml"
    config.write_text("io_depth: 65\n")
    r = integrityd("config", "check", config)
    assert r.returncode == 17
    assert f"{config}:1: io_depth: must be between 0 and 64, got 65" in r.stderr


def resident(path: Path, offset: int, length: int) -> int:
    """Pages of ``path`` in ``[offset, offset + length)`` that are in the page cache.

    ``mincore`` of a private mapping: unlike a ``RWF_NOWAIT`` probe, looking starts no
    read. (Linux shows page-cache pages of another's file only to its owner, or root.)
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    fd = os.open(path, os.O_RDONLY)
    try:
        # Writable (and private: nothing is ever written) so that ctypes can take its
        # address.
        m = mmap.mmap(fd, offset + length, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    try:
        start = ctypes.c_char.from_buffer(m)
        vec = ctypes.create_string_buffer(-(-length // mmap.PAGESIZE))
        assert libc.mincore(ctypes.addressof(start) + offset, length, vec) == 0
        del start
        return sum(b & 1 for b in vec.raw)
    finally:
        m.close()


def pages(length: int) -> int:
    return length // mmap.PAGESIZE


@pytest.fixture
def evicted(tmp_path: Path) -> Path:
    """A large file none of whose pages is in the page cache."""
    path = tmp_path / "large"
    path.write_bytes(os.urandom(STREAM_AHEAD + 4 * STREAM_STEP))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped
    finally:
        os.close(fd)
    if resident(path, 0, path.stat().st_size):
        pytest.skip("this filesystem keeps pages that POSIX_FADV_DONTNEED should drop")
    return path


@pytest.mark.skipif(not ROOT, reason="mincore shows another's page cache to root only")
def test_streamer_reads_ahead_only_so_far(evicted: Path) -> None:
    """Up to STREAM_AHEAD past the hasher's position, no further, and on as it moves."""
    size = evicted.stat().st_size
    fd = os.open(evicted, os.O_RDONLY)
    streamer = Streamer()
    try:
        streamer.start(fd, 0, size)
        wait_for(lambda: resident(evicted, 0, STREAM_AHEAD) == pages(STREAM_AHEAD), 30)
        assert resident(evicted, STREAM_AHEAD, size - STREAM_AHEAD) == 0
        streamer.at(2 * STREAM_STEP)
        near = STREAM_AHEAD + 2 * STREAM_STEP
        wait_for(lambda: resident(evicted, 0, near) == pages(near), 30)
        assert resident(evicted, near, size - near) == 0
        streamer.stop()
    finally:
        os.close(fd)


@pytest.mark.skipif(not ROOT, reason="mincore shows another's page cache to root only")
def test_a_cold_large_file_is_streamed_and_hashed_right(evicted: Path) -> None:
    data = evicted.read_bytes()
    fd = os.open(evicted, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    for stream in (True, False):
        hasher = Hasher(256 << 10, stream=stream)
        state = hasher.state(bytes(evicted), HINT_FILE)
        hasher.close()
        assert (state.sha256, state.size) == (hashlib.sha256(data).digest(), len(data))


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.skipif(not ROOT, reason="mincore shows another's page cache to root only")
def test_the_next_directory_is_listed_and_read_ahead(tmp_path: Path) -> None:
    """upcoming(): the files of the worker's next directory reach the cache.

    A directory on another device (a mount point, a pseudo-filesystem) is not even listed.
    """
    nxt = tmp_path / "next"
    nxt.mkdir()
    (nxt / "sub").mkdir()
    files = [nxt / f"f{i}" for i in range(20)]
    for f in files:
        f.write_bytes(os.urandom(8192))
        evict(f)
    if any(resident(f, 0, 8192) for f in files):
        pytest.skip("this filesystem keeps pages that POSIX_FADV_DONTNEED should drop")
    prefetch = Prefetcher(2, 1 << 16)
    try:
        prefetch.ahead(None, [])  # starts the threads
        prefetch.upcoming(bytes(nxt), os.stat(nxt).st_dev + 1)
        prefetch.wait()
        assert not any(resident(f, 0, 8192) for f in files)
        prefetch.upcoming(bytes(nxt), os.stat(nxt).st_dev)
        prefetch.wait()
        wait_for(lambda: all(resident(f, 0, 8192) == 2 for f in files), 10, "the next files")
    finally:
        prefetch.close()


@pytest.mark.skipif(not ROOT, reason="mincore shows another's page cache to root only")
def test_the_look_ahead_stops_at_a_warm_directory(tmp_path: Path) -> None:
    """A next directory whose first file is cached is not read ahead, nor counted cold.

    Else one cold directory in a warm tree has the rest of the worker's walk read ahead:
    each looked-ahead directory counted as cold, and looked further.
    """
    warm, cold_dir = tmp_path / "warm", tmp_path / "cold"
    for d in (warm, cold_dir):
        d.mkdir()
        for i in range(20):
            (d / f"f{i}").write_bytes(os.urandom(8192))
            evict(d / f"f{i}")
    with os.scandir(warm) as it:  # the first file in the directory's own order
        first = warm / next(e.name for e in it if e.is_file())
    first.read_bytes()  # cached again
    rest = [f for f in warm.iterdir() if f != first]
    if any(resident(f, 0, 8192) for f in rest):
        pytest.skip("this filesystem keeps pages that POSIX_FADV_DONTNEED should drop")
    prefetch = Prefetcher(1, 1 << 16)
    try:
        prefetch.ahead(None, [])  # starts the thread
        prefetch.upcoming(bytes(warm), os.stat(warm).st_dev)
        prefetch.wait()
        assert not prefetch.was_cold(bytes(warm))
        assert not any(resident(f, 0, 8192) for f in rest)
        prefetch.upcoming(bytes(cold_dir), os.stat(cold_dir).st_dev)
        prefetch.wait()
        assert prefetch.was_cold(bytes(cold_dir))
    finally:
        prefetch.close()


def test_streamer_thread_ends_on_close(evicted: Path) -> None:
    """A daemon's worker replaces its Scanner on every reload: no thread may stay behind."""
    fd = os.open(evicted, os.O_RDONLY)
    before = set(threading.enumerate())
    streamer = Streamer()
    try:
        streamer.start(fd, 0, evicted.stat().st_size)
        streamer.stop()
    finally:
        os.close(fd)
    threads = set(threading.enumerate()) - before
    assert [t.name for t in threads] == ["stream"]
    streamer.close()
    assert not any(t.is_alive() for t in threads)
