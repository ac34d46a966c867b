"""Faults: killed workers, signals, concurrent writers and damaged manifests lose nothing.

A large sparse file makes a run last long enough to interfere with it at a known point:
the test waits until a hash worker has that file open, then acts.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from integrityd.errors import ExitCode

from .conftest import (
    alive,
    descendants,
    events,
    findings,
    holder_of,
    integrityd,
    log_lines,
    sparse,
    start,
    summary,
    wait_for,
)

BIG = 2 << 30  # 2 GiB of holes: about a second of hashing, no disk space
READ_SINCE_OPEN = 64 << 20  # more than any other file in the tree, far less than BIG


@pytest.fixture
def slow_tree(tree: Path) -> Path:
    """The small tree plus one big sparse file."""
    sparse(tree / "big.img", BIG)
    return tree


def dump(manifest: Path) -> list[tuple[object, ...]]:
    """The baseline rows, read straight from SQLite."""
    with sqlite3.connect(manifest) as c:
        return c.execute("SELECT * FROM files ORDER BY parent, name").fetchall()


def _bytes_read(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            return int(next(line for line in f if line.startswith("rchar:")).split()[1])
    except (OSError, StopIteration):
        return -1


def _maps(pid: int, path: Path) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(line.rstrip("\n").endswith(" " + str(path)) for line in f)
    except OSError:
        return False


def hashing_pid(
    proc: subprocess.Popen[str], big: Path, exclude: frozenset[int] = frozenset()
) -> int:
    """Wait until a worker of ``proc`` is hashing ``big``; return its pid.

    Having it open is not enough: the worker that lists its directory opens it too, for
    one read and an fstat(), before handing it to a task of its own. A kill in that
    instant hits the directory's task, not the file's. So the same worker must have read
    READ_SINCE_OPEN bytes while holding it, or have it mapped (mapped.py: the page
    faults of a mapping do not count as bytes read), which only hashing ``big`` does.
    """
    first_seen: dict[int, int] = {}

    def hashing() -> int | None:
        pid = holder_of(big, descendants(proc.pid) - exclude)
        if pid is None:
            return None
        read = _bytes_read(pid)
        if read < 0:
            return None  # gone already
        start = first_seen.setdefault(pid, read)
        return pid if read - start >= READ_SINCE_OPEN or _maps(pid, big) else None

    return int(wait_for(hashing, timeout=60, what=f"a worker to hash {big}"))


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_worker_sigkill_mid_check_requeues_its_batch(slow_tree: Path, manifest: Path) -> None:
    """A worker killed while hashing is replaced; its files are hashed again, none skipped."""
    assert integrityd("init", "-m", manifest, slow_tree).returncode == 0
    proc = start("check", "-m", manifest, "--json", "-j", "2")
    seen = descendants(proc.pid)
    os.kill(hashing_pid(proc, slow_tree / "big.img"), signal.SIGKILL)
    r = finish(proc)
    assert r.returncode == 0, r.stderr
    assert findings(r) == []
    assert summary(r)["files"] == 8
    assert [line["event"] for line in log_lines(r)] == ["worker_died"]
    assert not any(alive(p) for p in seen | descendants(proc.pid))


def test_worker_killed_twice_reports_incomplete(slow_tree: Path, manifest: Path) -> None:
    """If the retry dies too, its files are reported unreadable with bit 8, not dropped."""
    assert integrityd("init", "-m", manifest, slow_tree).returncode == 0
    big = slow_tree / "big.img"
    proc = start("check", "-m", manifest, "--json", "-j", "1")
    first = hashing_pid(proc, big)
    os.kill(first, signal.SIGKILL)
    os.kill(hashing_pid(proc, big, exclude=frozenset({first})), signal.SIGKILL)
    r = finish(proc)
    assert r.returncode == ExitCode.INCOMPLETE, r.stderr
    lost = [e for e in events(r) if "file" in e]
    assert str(big) in {e["file"]["path"] for e in lost}
    assert {e["error"]["type"] for e in lost} == {"worker_died"}


def test_sigint_during_accept_keeps_old_baseline(slow_tree: Path, manifest: Path) -> None:
    """Ctrl-C in the middle of accept: exit 130, the baseline is exactly as before, no leftovers."""
    assert integrityd("init", "-m", manifest, slow_tree).returncode == 0
    before = dump(manifest)
    (slow_tree / "a.txt").write_text("edited\n")
    proc = start("accept", "-m", manifest, "--all")
    worker = hashing_pid(proc, slow_tree / "big.img")
    seen = descendants(proc.pid) | {worker}
    proc.send_signal(signal.SIGINT)
    r = finish(proc)
    assert r.returncode == 130, r.stderr
    assert "nothing was changed" in r.stderr
    assert dump(manifest) == before
    wait_for(lambda: not any(alive(p) for p in seen), timeout=10, what="children to exit")
    assert findings(integrityd("check", "-m", manifest, "--json")) == [
        ("modified", f"{slow_tree}/a.txt")
    ]


def test_kill_9_during_init_keeps_old_baseline(slow_tree: Path, manifest: Path) -> None:
    """Kill -9 of the main process mid-init leaves the previous baseline and no processes."""
    assert integrityd("init", "-m", manifest, slow_tree).returncode == 0
    before = dump(manifest)
    (slow_tree / "new.txt").write_text("n")
    proc = start("init", "-m", manifest, slow_tree)
    hashing_pid(proc, slow_tree / "big.img")
    seen = descendants(proc.pid)
    proc.kill()
    result = finish(proc)  # the workers' stderr too: they hold the pipe until they exit
    assert result.returncode == -signal.SIGKILL
    wait_for(lambda: not any(alive(p) for p in seen), timeout=10, what="orphans to exit")
    assert dump(manifest) == before
    assert "Traceback" not in result.stderr  # a worker whose main is gone leaves quietly


def test_a_damaged_page_read_by_the_workers_is_one_line(tmp_path: Path, manifest: Path) -> None:
    """The workers read the baseline too: a damaged page there is exit 18, in one line."""
    root = tmp_path / "many"
    for d in range(20):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(100):
            (root / f"d{d}" / f"file-with-a-longish-name-{i}").write_text("x" * i)
    assert integrityd("init", "-m", manifest, root).returncode == 0
    for suffix in ("-wal", "-shm"):
        Path(f"{manifest}{suffix}").unlink(missing_ok=True)
    data = bytearray(manifest.read_bytes())
    pages = len(data) // 4096
    for page in range(pages // 2, pages // 2 + 3):  # leaves of the files table, not its root
        data[page * 4096 : (page + 1) * 4096] = hashlib.sha256(bytes([page])).digest() * 128
    manifest.write_bytes(bytes(data))
    r = integrityd("check", "--json", "-m", manifest)
    assert r.returncode == 18, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert "database disk image is malformed" in r.stderr
    assert "Traceback" not in r.stderr


def _waiting_for_a_reply(pid: int) -> bool:
    """True while ``pid`` sleeps in a read of a pipe (main, waiting for the summary)."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read().strip().endswith("pipe_read")  # anon_pipe_read on 6.x kernels
    except OSError:
        return False


def test_accept_whose_main_dies_before_the_commit_commits_nothing(
    slow_tree: Path, manifest: Path
) -> None:
    """The collector commits only for a main that is still there to report it.

    The collector is stopped mid-run; main sends everything and Finish, then waits; main
    is killed; the collector, resumed, finds Finish in its pipe, but its parent is gone:
    it rolls back. Before, it committed a baseline nobody had seen the report of.
    """
    assert integrityd("init", "-m", manifest, slow_tree).returncode == 0
    before = dump(manifest)
    (slow_tree / "new.txt").write_text("n")
    proc = start("accept", "--all", "-m", manifest, "--json", "-j", "1")
    hashing_pid(proc, slow_tree / "big.img")  # the collector has said Ready by now
    collector = min(descendants(proc.pid))  # started first, before the workers
    os.kill(collector, signal.SIGSTOP)
    try:
        wait_for(
            lambda: descendants(proc.pid) == {collector} and _waiting_for_a_reply(proc.pid),
            timeout=60,
            what="main to wait for the summary, the workers gone",
        )
        proc.kill()
        proc.wait(20)
    finally:
        os.kill(collector, signal.SIGCONT)
    wait_for(lambda: not alive(collector), timeout=20, what="the collector to exit")
    result = finish(proc)  # stdout closes once the collector, which shares it, is gone
    assert result.returncode == -signal.SIGKILL
    assert dump(manifest) == before
    assert '"action": "summary"' not in result.stdout  # and it reported nothing


def test_second_writer_is_refused_reader_is_not(tree: Path, manifest: Path) -> None:
    """While another writer holds the manifest, accept fails with 'locked' (20).

    It fails after a short wait; a check still reads meanwhile; once the lock is gone,
    accept works.
    """
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    (tree / "a.txt").write_text("edited\n")
    holder = sqlite3.connect(manifest, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # what a running init or accept holds
    try:
        other = integrityd("accept", "-m", manifest, "--all")
        assert other.returncode == 20, other.stderr
        assert "is locked by another integrityd writer" in other.stderr
        reader = integrityd("check", "-m", manifest, "--json")
        assert findings(reader) == [("modified", f"{tree}/a.txt")]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert integrityd("accept", "-m", manifest, "--all").returncode == 0
    assert integrityd("check", "-m", manifest).returncode == 0


def test_two_real_writers_never_corrupt(slow_tree: Path, manifest: Path) -> None:
    """Two accepts at once: each exits 0 or 20, and the manifest ends consistent."""
    assert integrityd("init", "-m", manifest, slow_tree).returncode == 0
    (slow_tree / "a.txt").write_text("edited\n")
    first = start("accept", "-m", manifest, "--all")
    hashing_pid(first, slow_tree / "big.img")
    second = integrityd("accept", "-m", manifest, "--all")
    assert finish(first).returncode == 0
    assert second.returncode in (0, 20), second.stderr
    with sqlite3.connect(manifest) as c:
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert integrityd("check", "-m", manifest).returncode == 0


def test_collector_death_is_fatal_and_clean(slow_tree: Path, manifest: Path) -> None:
    """If the collector dies, the run stops with exit 19 and a clear message; nothing hangs."""
    assert integrityd("init", "-m", manifest, slow_tree).returncode == 0
    proc = start("check", "-m", manifest, "-j", "1")
    worker = hashing_pid(proc, slow_tree / "big.img")
    seen = descendants(proc.pid)
    collector = next(p for p in seen if holder_of(manifest, {p}) and p != worker)
    os.kill(collector, signal.SIGKILL)
    r = finish(proc)
    assert r.returncode == 19, r.stderr
    assert "collector process ended unexpectedly" in r.stderr
    assert "Traceback" not in r.stderr
    wait_for(lambda: not any(alive(p) for p in seen), timeout=10, what="children to exit")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b"not a database at all" + b[21:], "not an SQLite file"),
        (lambda b: b[:100] + bytes(x ^ 0xFF for x in b[100:4096]) + b[4096:], "damaged"),
        (lambda b: b[:1024], "damaged"),
    ],
    ids=["not-sqlite", "flipped-header-page", "truncated"],
)
def test_damaged_manifest_is_reported_and_untouched(
    tree: Path, manifest: Path, damage: Callable[[bytes], bytes], message: str
) -> None:
    """A damaged manifest exits 18 with a message, for check and init, and is left as is."""
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    for suffix in ("-wal", "-shm"):
        Path(f"{manifest}{suffix}").unlink(missing_ok=True)
    manifest.write_bytes(damage(manifest.read_bytes()))
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    for cmd in ("check", "init"):
        r = integrityd(cmd, "-m", manifest, tree)
        assert r.returncode == 18, (cmd, r.stderr)
        assert message in r.stderr
        assert "Traceback" not in r.stderr
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() == digest


def test_foreign_sqlite_file_is_not_ours(tree: Path, tmp_path: Path) -> None:
    """Pointing -m at some other application's SQLite database is refused, file untouched."""
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE t (x)")
    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    r = integrityd("init", "-m", other, tree)
    assert r.returncode == 18
    assert "is not an integrityd manifest" in r.stderr
    assert hashlib.sha256(other.read_bytes()).hexdigest() == digest
