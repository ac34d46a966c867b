"""Large files hashed straight from the page cache: right digests, and nobody killed or held up.

Real files, real leases and a real second process that truncates the file being hashed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from integrityd.hashing import Hasher
from integrityd.mapped import MAP_MIN, WINDOW, Mapper
from integrityd.messages import HINT_FILE

from .conftest import can_mount, findings, in_mount_namespace, integrityd, wait_for

SIZE = MAP_MIN + 3 * WINDOW + 12_345  # windows, and a last one that is not whole


@pytest.fixture
def big(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


def lease_breaking(path: Path) -> bool:
    """Whether /proc/locks shows a lease on ``path`` that a writer is waiting to break."""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return any("LEASE" in line and "BREAK" in line and f":{ino} " in line for line in f)


def test_large_file_is_hashed_from_a_mapping(big: Path) -> None:
    data = big.read_bytes()
    fd = os.open(big, os.O_RDONLY)
    try:
        for offset in (0, 256 << 10):  # from the start, and after the first chunk's read
            h = hashlib.sha256(data[:offset])
            assert Mapper().hash(h, fd, offset, SIZE) == SIZE  # all of it mapped
            assert h.digest() == hashlib.sha256(data).digest()
    finally:
        os.close(fd)
    state = Hasher(256 << 10).state(bytes(big), HINT_FILE)
    digest = hashlib.sha256(data).digest()
    assert (state.sha256, state.size, state.error_type) == (digest, SIZE, None)


def test_file_open_for_writing_is_read_not_mapped(big: Path) -> None:
    """No lease while anyone may write: the ordinary reads, with the same digest."""
    writer = os.open(big, os.O_WRONLY)
    fd = os.open(big, os.O_RDONLY)
    try:
        assert Mapper().hash(hashlib.sha256(), fd, 0, SIZE) == 0
        state = Hasher(256 << 10).state(bytes(big), HINT_FILE)
        assert state.sha256 == hashlib.sha256(big.read_bytes()).digest()
    finally:
        os.close(fd)
        os.close(writer)


def test_small_file_and_other_threads_are_not_mapped(tmp_path: Path, big: Path) -> None:
    small = tmp_path / "small"
    small.write_bytes(os.urandom(MAP_MIN - 1))
    fd = os.open(small, os.O_RDONLY)
    try:
        assert Mapper().hash(hashlib.sha256(), fd, 0, MAP_MIN - 1) == 0
    finally:
        os.close(fd)
    # SIGIO's handler can only be set in the main thread: elsewhere, the ordinary reads.
    seen: list[object] = []

    def hash_in_thread() -> None:
        seen.append(Mapper().usable)
        seen.append(Hasher(256 << 10).state(bytes(big), HINT_FILE).sha256)

    t = threading.Thread(target=hash_in_thread)
    t.start()
    t.join()
    assert seen == [False, hashlib.sha256(big.read_bytes()).digest()]


TRUNCATE = """
import os, sys, time
path = sys.argv[1]
t = time.monotonic()
fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
print(time.monotonic() - t, flush=True)
os.close(fd)
"""


class _Stalling:
    """A SHA-256 that, in its second window, has a second process truncate the file.

    It returns only once that process waits on the lease (``/proc/locks`` says so):
    the mapping is still in use then, and touching it after a truncation would be
    SIGBUS. The truncation must wait for the mapping to be dropped, and no longer.
    """

    def __init__(self, path: Path) -> None:
        self.h = hashlib.sha256()
        self.path = path
        self.calls = 0
        self.writer: subprocess.Popen[str] | None = None

    def update(self, data: memoryview) -> None:
        self.h.update(data)
        self.calls += 1
        if self.calls == 2:
            self.writer = subprocess.Popen(
                [sys.executable, "-c", TRUNCATE, str(self.path)], stdout=subprocess.PIPE, text=True
            )
            wait_for(lambda: lease_breaking(self.path), 10, "the writer to wait on the lease")


def test_truncation_waits_for_the_window_and_kills_nobody(big: Path) -> None:
    stalling = _Stalling(big)
    fd = os.open(big, os.O_RDONLY)
    try:
        started = time.monotonic()
        reached = Mapper().hash(stalling, fd, 0, SIZE)  # type: ignore[arg-type]
        held = time.monotonic() - started
    finally:
        os.close(fd)
    assert stalling.writer is not None
    out, _ = stalling.writer.communicate(timeout=30)
    assert stalling.writer.returncode == 0
    # The mapping was dropped after the window in which the lease broke: two windows.
    assert reached == MAP_MIN + WINDOW < SIZE
    assert float(out) <= held  # the writer waited for that, not for the whole file
    assert big.stat().st_size == 0
    assert not lease_breaking(big)


def test_truncated_while_hashed_is_truthful(big: Path) -> None:
    """Through the Hasher: the file as it was, or as it is now, never a mixture."""
    old = hashlib.sha256(big.read_bytes()).digest()
    writer = subprocess.Popen([sys.executable, "-c", TRUNCATE, str(big)], stdout=subprocess.PIPE)
    state = Hasher(256 << 10).state(bytes(big), HINT_FILE)
    writer.communicate(timeout=30)
    assert writer.returncode == 0
    seen = (state.size, state.sha256, state.error_type)
    assert seen in {(SIZE, old, None), (0, hashlib.sha256().digest(), None)} or (
        state.error_type == "changing"
    ), seen


def test_check_finds_one_byte_changed_deep_in_a_large_file(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    big = root / "big.bin"
    big.write_bytes(os.urandom(SIZE))
    manifest = tmp_path / "m.db"
    assert integrityd("init", "-m", manifest, root).returncode == 0
    with big.open("r+b") as f:
        f.seek(MAP_MIN + WINDOW + 7)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    r = integrityd("check", "--json", "-m", manifest)
    assert r.returncode == 4, r.stderr
    assert findings(r) == [("modified", str(big))]


WATCH_LEASES = """
import hashlib, os, sys, threading
from integrityd.hashing import Hasher
from integrityd.messages import HINT_FILE
path = sys.argv[1]
pid, seen, done = str(os.getpid()), [], threading.Event()
def watch():
    while not done.is_set():
        with open("/proc/locks") as f:
            seen.extend(line for line in f if "LEASE" in line and f" {pid} " in line)
threading.Thread(target=watch, daemon=True).start()
hasher = Hasher(256 << 10)
fd = os.open(path, os.O_RDONLY)
local = hasher.local(fd)
os.close(fd)
digest = b""
for _ in range(20):  # long enough for the watcher to look while a lease would be held
    digest = hasher.state(path.encode(), HINT_FILE).sha256
done.set()
print(local, bool(seen), digest == hashlib.sha256(open(path, "rb").read()).digest())
"""


@pytest.mark.skipif(not can_mount(), reason="no mount namespace here (unshare -m)")
@pytest.mark.parametrize("fs", ["overlay", "tmpfs"])
def test_mapped_only_on_local_filesystems(tmp_path: Path, fs: str) -> None:
    """Read on overlayfs (whose files another layer can truncate); mapped on tmpfs."""
    for d in ("lower", "upper", "work", "merged"):
        (tmp_path / d).mkdir()
    (tmp_path / "lower" / "big.bin").write_bytes(os.urandom(SIZE))
    options = f"lowerdir={tmp_path}/lower,upperdir={tmp_path}/upper,workdir={tmp_path}/work"
    merged = tmp_path / "merged"
    mount = (
        f"mount -t overlay overlay -o {options} {merged}"
        if fs == "overlay"
        else f"mount -t tmpfs tmpfs {merged} && cp {tmp_path}/lower/big.bin {merged}/"
    )
    script = f"{mount} && {sys.executable} -c '{WATCH_LEASES}' {merged}/big.bin"
    r = in_mount_namespace(script)
    assert r.returncode == 0, r.stderr
    local = fs == "tmpfs"
    assert r.stdout.split() == [str(local), str(local), "True"]  # local, leased, digest
