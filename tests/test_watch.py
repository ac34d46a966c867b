"""The daemon: the real `integrityd watch` on real trees, with a real NOTIFY_SOCKET.

Each test starts the daemon as a subprocess, waits for READY=1 on a unix datagram
socket bound the way systemd binds it, makes real changes and waits (with deadlines,
never sleeps) for the exact JSON events on stdout.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from integrityd.watchplan import process_watch_count

from .conftest import (
    DROP_DAC,
    Event,
    Watcher,
    alive,
    descendants,
    holder_of,
    integrityd,
    sha,
    sparse,
    wait_for,
)


def started(tree: Path, manifest: Path, watcher: Callable[..., Watcher], *args: object) -> Watcher:
    """Baseline ``tree``, start the daemon on it, wait for READY and the catch-up scan."""
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    w = watcher("-m", manifest, *args)
    w.ready()
    w.scanned()
    return w


def state_of(e: Event) -> tuple[str | None, str | None]:
    """(path, content digest) an event reports; None where it has none."""
    f = e.get("file", {})
    return f.get("path"), f.get("hash", {}).get("sha256")


def config(
    tmp_path: Path, manifest: Path, *roots: Path, name: str = "c.yaml", **watch: Any
) -> Path:
    """Write a config file: the manifest, the roots and the ``watch:`` settings."""
    lines = [f"manifest: {manifest}", "workers: 2", "roots:"]
    lines += [f"  - path: {r}" for r in roots]
    if watch:
        lines.append("watch:")
        lines += [f"  {k}: {v}" for k, v in watch.items()]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_catch_up_then_every_kind_of_change_in_real_time(
    tree: Path, manifest: Path, tmp_path: Path, watcher: Callable[..., Watcher]
) -> None:
    """Changes made while stopped are found at start; each later change is an event."""
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    (tree / "a.txt").write_text("changed while the daemon was stopped\n")
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    (outside / "inner" / "x.txt").write_bytes(b"moved in\n")

    w = watcher("-m", manifest)
    w.ready()
    e = w.wait("modified", tree / "a.txt")
    assert e["file"]["hash"]["sha256"] == sha(b"changed while the daemon was stopped\n")
    w.scanned()
    assert w.log("scan_finished")["directories"] == 3  # to be held against the watch count

    (tree / "sub" / "c.txt").write_bytes(b"new content\n")
    (tree / "new.txt").write_bytes(b"created\n")
    (tree / "b.bin").unlink()
    os.chmod(tree / "sub" / "deep" / "d.txt", 0o600)
    assert w.wait("added", tree / "new.txt")["file"]["hash"]["sha256"] == sha(b"created\n")
    assert w.wait("removed", tree / "b.bin")["baseline"]["size"] == 70_000
    meta = w.wait("metadata", tree / "sub" / "deep" / "d.txt")
    assert (meta["changes"], meta["file"]["mode"]) == (["mode"], "0600")
    c_txt = w.wait("modified", tree / "sub" / "c.txt")
    assert c_txt["file"]["hash"]["sha256"] == sha(b"new content\n")

    os.rename(tree / "sub" / "c.txt", tree / "sub" / "renamed.txt")
    os.rename(outside / "inner", tree / "inner")
    shutil.move(tree / "sub" / "deep", outside / "deep")
    w.wait("removed", tree / "sub" / "c.txt")
    renamed = w.wait("added", tree / "sub" / "renamed.txt")
    assert renamed["file"]["hash"]["sha256"] == sha(b"new content\n")
    w.wait("added", tree / "inner")
    assert w.wait("added", tree / "inner" / "x.txt")["file"]["hash"]["sha256"] == sha(b"moved in\n")
    (tree / "inner" / "later.txt").write_bytes(b"the moved-in directory is watched\n")
    w.wait("added", tree / "inner" / "later.txt")
    w.wait("removed", tree / "sub" / "deep")
    w.wait("removed", tree / "sub" / "deep" / "d.txt")

    assert w.stop() == 0
    found = w.findings()
    assert len(found) == len(set(found)), "each change is reported once"
    assert set(found) == {
        ("modified", str(tree / "a.txt")),
        ("added", str(tree / "new.txt")),
        ("removed", str(tree / "b.bin")),
        ("metadata", str(tree / "sub" / "deep" / "d.txt")),
        ("modified", str(tree / "sub" / "c.txt")),
        ("removed", str(tree / "sub" / "c.txt")),
        ("added", str(tree / "sub" / "renamed.txt")),
        ("added", str(tree / "inner")),
        ("added", str(tree / "inner" / "x.txt")),
        ("added", str(tree / "inner" / "later.txt")),
        ("removed", str(tree / "sub" / "deep")),
        ("removed", str(tree / "sub" / "deep" / "d.txt")),
    }
    assert "STOPPING=1" in w.notes
    last = w.events[-1]
    assert last["event"]["action"] == "summary"
    assert last["summary"]["restored"] == 0
    # The daemon never touches the baseline.
    assert integrityd("check", "-m", manifest, "--json").returncode == 1 | 2 | 4


def test_many_writes_one_event_then_restored(
    tree: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """A file written in 1,000 small writes is hashed once; a same-state rewrite is not news."""
    w = started(tree, manifest, watcher)
    target = tree / "a.txt"
    with open(target, "wb") as f:
        for i in range(1000):
            f.write(b"%d\n" % i)
            f.flush()
    content = target.read_bytes()
    e = w.wait("modified", target)
    assert e["file"]["hash"]["sha256"] == sha(content)
    assert e["baseline"]["hash"]["sha256"] == sha(b"alpha\n")

    target.write_bytes(content)  # the same state again: no new event
    (tree / "marker").write_bytes(b"")  # events arrive in order: this one comes after
    w.wait("added", tree / "marker")
    assert w.findings().count(("modified", str(target))) == 1

    target.write_bytes(b"alpha\n")
    restored = w.wait("restored", target)
    assert restored["file"]["hash"]["sha256"] == sha(b"alpha\n")
    (tree / "marker").unlink()
    w.wait("restored", tree / "marker")  # added, then gone again: back to the baseline
    assert w.stop() == 0
    assert w.events[-1]["summary"]["restored"] == 2


def test_accept_while_watching_moves_the_baseline(
    tree: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """After `accept`, the daemon compares with the new baseline; accepted is not restored."""
    w = started(tree, manifest, watcher)
    target = tree / "a.txt"
    target.write_bytes(b"beta\n")
    w.wait("modified", target)
    r = integrityd("accept", "-m", manifest, target)
    assert r.returncode == 0, r.stderr
    target.write_bytes(b"beta\n")  # as the new baseline: neither news nor a restore
    (tree / "marker").write_bytes(b"")
    w.wait("added", tree / "marker")
    target.write_bytes(b"alpha\n")  # the old baseline is now a change
    e = wait_for(
        lambda: [x for x in w.events if x.get("file", {}).get("path") == str(target)][1:],
        what="the second event for a.txt",
    )[0]
    assert (e["event"]["action"], e["baseline"]["hash"]["sha256"]) == ("modified", sha(b"beta\n"))
    assert w.stop() == 0
    actions = [
        x["event"]["action"] for x in w.events if x.get("file", {}).get("path") == str(target)
    ]
    assert actions == ["modified", "modified"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_chown_is_a_metadata_change(
    tree: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """A chown raises an attribute event: metadata, with the new uid and gid."""
    w = started(tree, manifest, watcher)
    os.chown(tree / "a.txt", 4321, 4322)
    e = w.wait("metadata", tree / "a.txt")
    assert (e["changes"], e["file"]["uid"], e["file"]["gid"]) == (["uid", "gid"], "4321", "4322")
    assert w.stop() == 0


def test_periodic_rescan_finds_what_no_event_shows(
    tree: Path, manifest: Path, tmp_path: Path, watcher: Callable[..., Watcher]
) -> None:
    """A write through mmap raises no inotify event; the periodic re-scan catches it."""
    target = tree / "b.bin"
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    w = watcher("-c", config(tmp_path, manifest, tree, rescan_interval="2s"))
    w.ready()
    w.scanned()
    # The file stays open: closing a file opened for writing raises IN_CLOSE_WRITE.
    with open(target, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[0:4] = b"\xff\xfe\xfd\xfc"
        m.flush()
        e = w.wait("modified", target, timeout=30)
        assert e["file"]["hash"]["sha256"] == sha(target.read_bytes())
    periodic = [x for x in w.logs if x.get("event") == "scan_started" and x["reason"] == "periodic"]
    assert periodic, "no periodic scan"
    assert _when(periodic[0]["timestamp"]) < _when(e["@timestamp"]), "found by the scan"
    assert w.stop() == 0


def test_a_write_through_a_hard_link_outside_the_root_is_found_by_the_rescan(
    tree: Path, manifest: Path, tmp_path: Path, watcher: Callable[..., Watcher]
) -> None:
    """The kernel reports a write to the directory the file was opened through, not to all.

    ``ln /etc/sudoers /var/tmp/x`` and a write to /var/tmp/x raise no event under /etc:
    the daemon learns of it from its next full scan, as documented, with the new link
    count and content.
    """
    target = tree / "a.txt"
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    w = watcher("-c", config(tmp_path, manifest, tree, rescan_interval="2s"))
    w.ready()
    w.scanned()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.link(target, outside / "x")
    with open(outside / "x", "ab") as f:
        f.write(b"appended through the other name\n")
    e = w.wait("modified", target, timeout=30)
    assert e["changes"] == ["hash.sha256", "size", "mtime", "nlink"]
    assert (e["file"]["nlink"], e["file"]["hash"]["sha256"]) == (2, sha(target.read_bytes()))
    periodic = [x for x in w.logs if x.get("event") == "scan_started" and x["reason"] == "periodic"]
    assert periodic, "no periodic scan"
    assert _when(periodic[0]["timestamp"]) < _when(e["@timestamp"]), "found by the scan"
    assert w.stop() == 0


def _when(stamp: str) -> datetime:
    """An ISO 8601 UTC timestamp (nanoseconds cut to microseconds)."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{frac[:6]:0<6}+00:00")


def test_own_reads_raise_no_events(
    tree: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """Hashing opens and reads every file; none of that may come back as an event."""
    for i in range(200):
        (tree / f"f{i}").write_bytes(os.urandom(100))
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    w = watcher("-m", manifest, "-c", config(tree.parent, manifest, tree, rescan_interval="1s"))
    w.ready()
    w.scanned(count=3)  # three full scans, each reading all 205 entries
    status = wait_for(
        lambda: [n for n in w.notes if n.startswith("STATUS=") and "0 paths pending" in n],
        what="a status line",
    )
    assert status
    assert w.findings() == []
    assert w.stop(signal.SIGINT) == 0
    assert w.events[-1]["summary"]["files"] >= 3 * 205


def test_a_live_change_goes_ahead_of_a_scan(
    tree: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """A change made while the catch-up scan has many tasks waiting is hashed before them.

    One worker, 24 large files each changed (a finding of the scan) and each a task of
    its own: the live change must not wait until the scan has worked through them.
    """
    big = [sparse(tree / f"big{i:02}.img", 128 << 20) for i in range(24)]
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    for b in big:
        os.chmod(b, 0o600)
    w = watcher("-m", manifest, "-j", "1")
    w.ready()
    # After the scan's first finding the root is listed: only the live event finds this.
    wait_for(w.findings, 60, "the scan's first finding")
    live = tree / "live.txt"
    live.write_bytes(b"written during the scan")
    assert w.wait("added", live)["file"]["hash"]["sha256"] == sha(b"written during the scan")
    want = sorted([str(live), *map(str, big)])
    # The scan's last findings may reach stdout after its scan_finished line.
    wait_for(lambda: sorted(p for _, p in w.findings()) == want, 60, "every finding")
    ahead = [path for _, path in w.findings()].index(str(live))
    assert ahead < 12, f"{ahead} of the scan's 24 findings came before the live change"
    assert w.stop() == 0


@pytest.mark.parametrize("max_pending", [100_000, 100], ids=["default", "folded"])
def test_storm_of_thousands_loses_nothing(
    tree: Path, manifest: Path, tmp_path: Path, watcher: Callable[..., Watcher], max_pending: int
) -> None:
    """3,000 files in 30 new directories: each is reported once, even past max_pending."""
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    cfg = config(tmp_path, manifest, tree, max_pending=max_pending)
    w = watcher("-c", cfg)
    w.ready()
    w.scanned()
    digests: dict[str, str | None] = {}  # path -> its content's digest (None: a directory)
    for d in range(30):
        (tree / f"d{d}").mkdir()
        digests[str(tree / f"d{d}")] = None
        for i in range(100):
            p = tree / f"d{d}" / f"f{i}"
            p.write_bytes(b"%d/%d" % (d, i))
            digests[str(p)] = sha(b"%d/%d" % (d, i))
    a = tree / "a.txt"
    for i in range(200):  # 200 rewrites: each state the daemon sees is new, the last counts
        a.write_bytes(b"%d" % i)

    def seen() -> set[tuple[str | None, str | None]]:
        return {state_of(e) for e in list(w.events) if e.get("event", {}).get("action") == "added"}

    wait_for(lambda: set(digests.items()) <= seen(), 60, "every file with its content")
    (tree / "marker").write_bytes(b"")
    w.wait("added", tree / "marker")
    found = [f for f in w.findings() if f[1] not in (str(tree / "marker"), str(a))]
    assert {p for _, p in found} == set(digests)
    assert {action for action, _ in found} == {"added"}
    # A scan may catch a file between its creation and its write (a state of its own),
    # but no state is reported twice.
    states = [state_of(e) for e in w.events if state_of(e)[0] in digests]
    assert len(states) == len(set(states))
    rewrites = [e for e in w.events if e.get("file", {}).get("path") == str(a)]
    assert {e["event"]["action"] for e in rewrites} == {"modified"}
    assert rewrites[-1]["file"]["hash"]["sha256"] == sha(b"199")
    assert w.stop() == 0


def test_a_storm_past_backlog_memory_drops_the_queues_and_loses_nothing(
    tree: Path, manifest: Path, tmp_path: Path, watcher: Callable[..., Watcher]
) -> None:
    """20,000 new symlinks held pending (settle 60 s): past 1 MiB, a re-scan finds all.

    A symlink's creation is its only event (no close after writing), so each waits out
    ``settle`` in memory: the backlog grows whatever the machine's speed. In the root
    itself, which is watched from the start (a new directory's own watch would wait
    for its settled scan).
    """
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    cfg = config(tmp_path, manifest, tree, max_pending=100_000, settle=60, backlog_memory="1MiB")
    w = watcher("-c", cfg)
    w.ready()
    w.scanned()
    want: set[tuple[str, str | None]] = set()
    for i in range(20_000):
        (tree / f"l{i}").symlink_to(f"target {i}")
        want.add((str(tree / f"l{i}"), None))
    relieved = w.log("backlog_memory", timeout=60)
    assert relieved["level"] == "warning"
    assert relieved["rss_bytes"] - relieved["base_bytes"] > 1 << 20
    started = w.log("scan_started", timeout=60, count=2)  # the first was the startup scan
    assert started["reason"] == "backlog_memory"

    def seen() -> set[tuple[str | None, str | None]]:
        return {state_of(e) for e in list(w.events) if e.get("event", {}).get("action") == "added"}

    wait_for(lambda: want <= seen(), 120, "every new symlink")
    assert {p for _, p in w.findings()} == {p for p, _ in want}
    targets = {e["file"]["path"]: e["file"].get("target_path") for e in list(w.events)}
    assert targets[str(tree / "l7")] == "target 7"
    assert w.stop() == 0


def test_sighup_adds_and_removes_roots_and_survives_a_broken_config(
    tmp_path: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """SIGHUP re-reads the config: roots come and go; a broken file keeps the old config."""
    a, b = tmp_path / "a", tmp_path / "b"
    for r in (a, b):
        r.mkdir()
        (r / "f").write_bytes(b"x")
        assert integrityd("init", "-m", manifest, r).returncode == 0
    cfg = config(tmp_path, manifest, a)
    w = watcher("-c", cfg)
    w.ready()
    w.scanned()
    (b / "before").write_bytes(b"not watched yet")
    (a / "marker1").write_bytes(b"")
    w.wait("added", a / "marker1")

    config(tmp_path, manifest, a, b)
    w.proc.send_signal(signal.SIGHUP)
    reloaded = w.log("reloaded")
    assert (reloaded["added"], reloaded["removed"]) == ([str(b)], [])
    w.wait("added", b / "before")  # the new root's catch-up scan
    wait_for(lambda: "RELOADING=1" in w.notes and w.notes.count("READY=1") >= 2, what="notify")

    config(tmp_path, manifest, b)
    w.proc.send_signal(signal.SIGHUP)
    assert w.log("reloaded", count=2)["removed"] == [str(a)]
    (a / "after").write_bytes(b"no longer watched")
    (b / "marker2").write_bytes(b"")
    w.wait("added", b / "marker2")

    cfg.write_text(f"manifest: {manifest}\nroots:\n  - path: {b}\n    chek: [content]\n")
    w.proc.send_signal(signal.SIGHUP)
    failed = w.log("reload_failed")
    assert f"{cfg}:4: roots[0].chek: unknown key" in failed["message"]
    (b / "still").write_bytes(b"still watched")
    w.wait("added", b / "still")
    assert w.stop() == 0
    assert ("added", str(a / "after")) not in w.findings()


def test_reload_applies_the_log_settings_in_every_process(
    tree: Path, manifest: Path, tmp_path: Path, watcher: Callable[..., Watcher]
) -> None:
    """SIGHUP with log.level debug: main, each worker and the collector log at debug.

    Each says so under the settings it has just applied; a process still on the old
    level (info) would drop the line.
    """
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    cfg = config(tmp_path, manifest, tree)
    w = watcher("-c", cfg)
    w.ready()
    w.scanned()
    assert not [e for e in w.logs if e.get("level") == "debug"]
    cfg.write_text(cfg.read_text() + "log:\n  level: debug\n")
    w.proc.send_signal(signal.SIGHUP)
    workers = {p for p in descendants(w.proc.pid) if p != w.proc.pid}

    def reconfigured() -> list[tuple[str, int]]:
        return sorted((e["process"], e["pid"]) for e in w.logs if e.get("event") == "reconfigured")

    wait_for(lambda: len(reconfigured()) == 4, 20, "main, 2 workers and the collector")
    kinds = [kind for kind, _ in reconfigured()]
    assert kinds == ["collector", "main", "worker", "worker"]
    assert {pid for kind, pid in reconfigured() if kind != "main"} <= workers
    assert all(e["level"] == "debug" for e in w.logs if e.get("event") == "reconfigured")
    assert w.stop() == 0


def test_root_removed_and_back(
    tmp_path: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """A root deleted under the daemon is reported; the others stay watched; it comes back."""
    a, b = tmp_path / "a", tmp_path / "b"
    for r in (a, b):
        (r / "sub").mkdir(parents=True)
        (r / "sub" / "f").write_bytes(b"x")
        assert integrityd("init", "-m", manifest, r).returncode == 0
    w = watcher("-c", config(tmp_path, manifest, a, b))
    w.ready()
    w.scanned()
    shutil.rmtree(a)
    w.wait("removed", a / "sub" / "f")
    w.wait("removed", a)
    failed = w.log("watch_failed")
    assert failed["root"] == str(a)
    (b / "g").write_bytes(b"b is still watched")
    w.wait("added", b / "g")

    (a / "sub").mkdir(parents=True)
    (a / "sub" / "f").write_bytes(b"x")
    assert w.log("root_watched")["root"] == str(a)
    w.wait("restored", a / "sub" / "f")
    (a / "h").write_bytes(b"watched again")
    w.wait("added", a / "h")
    assert w.stop() == 0


@pytest.mark.skipif(not DROP_DAC, reason="needs root, to drop CAP_DAC_OVERRIDE")
def test_a_root_back_but_unreadable_is_said_to_be_unwatched(
    tmp_path: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """A root that comes back where inotify may not watch it: watch_failed, not root_watched.

    watchdog 7.1 places no watch and raises nothing where inotify refuses one (EACCES):
    the daemon said root_watched for a root it did not watch.
    """
    a = tmp_path / "a"
    a.mkdir()
    (a / "f").write_bytes(b"x")
    assert integrityd("init", "-m", manifest, a).returncode == 0
    w = watcher("-c", config(tmp_path, manifest, a), prefix=DROP_DAC)
    w.ready()
    w.scanned()
    shutil.rmtree(a)
    assert w.log("watch_failed")["message"].endswith("watching it again once it is back")
    a.mkdir(mode=0o000)  # inotify_add_watch needs read permission: EACCES
    os.chown(a, 65534, 65534)
    failed = w.log("watch_failed", count=2)
    assert failed["message"] == f"cannot watch {a}: Permission denied; only scans will cover it"
    assert not [e for e in w.logs if e.get("event") == "root_watched"]
    assert w.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_one_filesystem_holds_for_events_too(
    tree: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """A filesystem mounted inside a root is not entered by scans, nor reported from events."""
    mnt = tree / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "none", str(mnt)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mnt / "before").write_bytes(b"on the tmpfs")
        assert integrityd("init", "-m", manifest, tree).returncode == 0
        w = watcher("-m", manifest)
        w.ready()
        w.scanned()
        (mnt / "inside").write_bytes(b"not ours")
        (mnt / "before").write_bytes(b"changed, not ours either")
        (tree / "outside").write_bytes(b"ours")
        w.wait("added", tree / "outside")
        assert w.stop() == 0
        assert w.findings() == [("added", str(tree / "outside"))]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _busy(tree: Path, manifest: Path, watcher: Callable[..., Watcher]) -> tuple[Watcher, Path, int]:
    """A daemon with one worker, caught hashing a new 2 GiB sparse file: (daemon, file, pid)."""
    w = started(tree, manifest, watcher, "-j", "1")
    big = sparse(tree / "big.img", 2 << 30)
    pid = wait_for(lambda: holder_of(big, descendants(w.proc.pid)), 30, "a worker on big.img")
    return w, big, int(pid)


def test_killed_worker_is_replaced_and_its_paths_hashed(
    tree: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """SIGKILL a worker mid-hash: a new one takes its paths; the change is still reported."""
    w, big, pid = _busy(tree, manifest, watcher)
    os.kill(pid, signal.SIGKILL)
    e = w.wait("added", big, timeout=60)
    assert e["file"]["size"] == 2 << 30
    assert w.log("worker_died")["pid"] == pid
    (tree / "after").write_bytes(b"1")
    w.wait("added", tree / "after")
    assert w.stop() == 0


def test_collector_death_ends_the_daemon_with_an_error(
    tree: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """A dead collector ends the daemon non-zero (systemd restarts it), never half-alive."""
    w, _, worker = _busy(tree, manifest, watcher)
    collector = next(p for p in descendants(w.proc.pid) if p != worker and holder_of(manifest, {p}))
    children = descendants(w.proc.pid)
    os.kill(collector, signal.SIGKILL)
    assert w.proc.wait(15) == 19
    error = w.log("fatal_error")
    assert "collector process ended unexpectedly" in error["message"]
    wait_for(lambda: not any(alive(p) for p in children), 10, "no process left")


def test_second_daemon_on_one_manifest_is_refused(
    tree: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """Two daemons on one manifest would report everything twice: the second exits 20."""
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    first = watcher("-m", manifest)
    first.ready()
    r = integrityd("watch", "-m", manifest)
    assert r.returncode == 20
    assert f"another integrityd watch (pid {first.proc.pid}) is already watching" in r.stderr
    assert "Traceback" not in r.stderr
    assert first.stop() == 0


def test_watchdog_pings_and_status_without_and_with_systemd(
    tree: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """WATCHDOG=1 comes while WATCHDOG_USEC is set; without NOTIFY_SOCKET it just runs."""
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    w = watcher("-m", manifest, env={"WATCHDOG_USEC": "400000"})
    w.ready()
    wait_for(lambda: w.notes.count("WATCHDOG=1") >= 3, 10, "three watchdog pings")
    assert any(n.startswith("STATUS=watching 1 root;") for n in w.notes)
    assert w.stop() == 0

    plain = watcher("-m", manifest, notify=False)
    plain.log("watching")
    (tree / "x").write_bytes(b"x")
    plain.wait("added", tree / "x")
    assert plain.stop() == 0


def test_a_manager_that_stops_reading_never_stalls_the_daemon(
    tree: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """Notify messages are sent without blocking: a full socket queue drops them instead."""
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    w = watcher("-m", manifest, env={"WATCHDOG_USEC": "10000"}, read_notes=False)
    w.scanned()
    assert w.sock is not None
    address = w.sock.getsockname()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:

        def full() -> bool:  # the daemon's pings (every 5 ms) fill the queue nobody reads
            try:
                probe.sendto(b"probe", socket.MSG_DONTWAIT, address)
            except BlockingIOError:
                return True
            return False

        wait_for(full, timeout=30, what="a full notify queue")
    (tree / "later").write_bytes(b"still reported")
    w.wait("added", tree / "later")
    assert w.stop() == 0


def test_missing_root_and_bad_config_fail_clearly(tmp_path: Path, manifest: Path) -> None:
    """No manifest is exit 18, a bad config exit 17 with file:line: key, before READY."""
    r = integrityd("watch", "-m", manifest)
    assert r.returncode == 18
    assert "does not exist" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("watch:\n  settle: soon\n")
    r = integrityd("watch", "-c", bad)
    assert r.returncode == 17
    assert f"{bad}:2: watch.settle: expected a duration" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="lowers fs.inotify.max_queued_events for a moment")
def test_queue_overflow_is_reported_and_rescanned(
    tree: Path, manifest: Path, tmp_path: Path, watcher: Callable[..., Watcher]
) -> None:
    """The kernel drops events past max_queued_events: the daemon says so and re-scans."""
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    saved = knob.read_text()
    knob.write_text("16\n")  # read once, when the daemon creates its inotify instance
    try:
        w = watcher("-m", manifest, "-j", "1")
        w.ready()
    finally:
        knob.write_text(saved)
    w.scanned()
    for i in range(500):
        (tree / f"storm{i}").write_bytes(b"%d" % i)
    lost = w.log("events_lost")
    assert lost["max_queued_events"] == int(saved)  # as it reads now; the daemon's was 16
    wait_for(
        lambda: {("added", str(tree / f"storm{i}")) for i in range(500)} <= set(w.findings()),
        60,
        "every file",
    )
    assert w.stop() == 0


def _unshare_works() -> bool:
    return shutil.which("unshare") is not None and (
        subprocess.run(["unshare", "-U", "-r", "true"], capture_output=True, check=False).returncode
        == 0
    )


def three_watches(
    tree: Path, manifest: Path, tmp_path: Path, watcher: Callable[..., Watcher], **watch: str
) -> Watcher:
    """The daemon on ``tree`` plus four directories (7 in all), with a watch limit of 3.

    A user namespace of its own gives the daemon that limit without touching the
    machine's.
    """
    for i in range(4):
        (tree / f"extra{i}").mkdir()
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    cfg = config(tmp_path, manifest, tree, **watch)
    shell = 'echo 3 > /proc/sys/user/max_inotify_watches && exec "$@"'
    w = watcher("-c", cfg, prefix=("unshare", "-U", "-r", "sh", "-c", shell, "sh"))
    w.ready()
    return w


@pytest.mark.skipif(not _unshare_works(), reason="needs unprivileged user namespaces")
def test_watch_limit_is_detected_and_covered_by_scans(
    tree: Path, manifest: Path, tmp_path: Path, watcher: Callable[..., Watcher]
) -> None:
    """Out of inotify watches, directories go unwatched: warn with numbers, re-scan instead."""
    w = three_watches(tree, manifest, tmp_path, watcher, rescan_interval="2s")
    warning = w.log("watches_missing")
    assert warning["watches"] == 3
    assert warning["max_user_watches"] == 3
    # Which directories got the 3 watches depends on listing order: write into all.
    dirs = [tree / "sub", tree / "sub" / "deep", *(tree / f"extra{i}" for i in range(4))]
    for d in dirs:
        (d / "new.txt").write_bytes(b"found by a scan")
    want = sha(b"found by a scan")

    def found(path: Path) -> bool:  # a scan may first catch it empty, before the write
        return any(state_of(e) == (str(path), want) for e in list(w.events))

    for d in dirs:
        wait_for(functools.partial(found, d / "new.txt"), 30, f"{d}/new.txt with its content")
    assert w.stop() == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs unprivileged user namespaces")
def test_over_the_watch_limit_the_upper_levels_stay_real_time(
    tree: Path, manifest: Path, tmp_path: Path, watcher: Callable[..., Watcher]
) -> None:
    """3 watches for 7 directories: the root and the first two of depth 1 are watched.

    watchdog 7.1 drops a whole recursive watch that reaches the limit; the daemon plans
    its own watches instead. With rescan_interval 1h no scan comes during the test (600 s
    while degraded), so what is found after the catch-up scan came from a watch.
    """
    w = three_watches(tree, manifest, tmp_path, watcher, rescan_interval="1h")
    warning = w.log("watches_missing")
    numbers = {k: warning[k] for k in ("watches", "directories", "unwatched", "max_user_watches")}
    assert numbers == {"watches": 3, "directories": 7, "unwatched": 4, "max_user_watches": 3}
    assert warning["root"] == str(tree)
    w.scanned()
    for d in (tree, tree / "extra0", tree / "extra1"):
        (d / "live.txt").write_bytes(b"seen at once")
        assert w.wait("added", d / "live.txt")["file"]["hash"]["sha256"] == sha(b"seen at once")
    assert w.stop() == 0


def test_a_directory_new_below_one_watched_alone_is_watched(
    tree: Path, manifest: Path, tmp_path: Path, watcher: Callable[..., Watcher]
) -> None:
    """A directory created below one watched alone gets a watch of its own before its scan.

    An excluded subdirectory makes the root such a directory (watched, not recursively).
    """
    (tree / "skip").mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"manifest: {manifest}\nworkers: 2\nroots:\n  - path: {tree}\n    exclude: [skip/]\n"
        "watch:\n  rescan_interval: 1h\n"
    )
    assert integrityd("init", "-c", cfg).returncode == 0
    w = watcher("-c", cfg)
    w.ready()
    w.scanned()
    (tree / "new" / "deeper").mkdir(parents=True)
    w.wait("added", tree / "new" / "deeper")
    (tree / "new" / "deeper" / "later.txt").write_bytes(b"written after the scan of new/\n")
    w.wait("added", tree / "new" / "deeper" / "later.txt")
    (tree / "skip" / "ignored.txt").write_bytes(b"excluded\n")
    # The kernel's count of the daemon's watches: the root and sub/ (with sub/deep), not
    # skip/, and new/ with new/deeper.
    watches = functools.partial(process_watch_count, str(w.proc.pid))
    assert watches() == 5
    shutil.rmtree(tree / "new")
    wait_for(lambda: watches() == 3, 20, "the watches of new/ to go with it")
    (tree / "new").mkdir()  # the same name again (maybe the same inode number): watched anew
    wait_for(lambda: watches() == 4, 20, "a watch on the new new/")
    (tree / "new" / "again.txt").write_bytes(b"again\n")
    w.wait("added", tree / "new" / "again.txt")
    assert w.stop() == 0
    assert not [p for _, p in w.findings() if "/skip" in p]


def test_the_daemon_leaves_nothing_in_the_temporary_directory(
    tree: Path, manifest: Path, tmp_path: Path, watcher: Callable[..., Watcher]
) -> None:
    """The process server's socket lives in TMPDIR while the daemon runs, and goes with it."""
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    w = watcher("-m", manifest, env={"TMPDIR": str(tmp)})
    w.ready()
    assert [p.name[:5] for p in tmp.iterdir()] == ["pymp-"]
    assert w.stop() == 0
    assert list(tmp.iterdir()) == []


def _mount_namespace_works() -> bool:
    return shutil.which("unshare") is not None and (
        subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode == 0
    )


# Mounts the whole filesystem read-only, as ProtectSystem=strict does, all but "$1".
READ_ONLY_BUT = (
    'd=$1; shift; mount --bind "$d" "$d" && mount --bind / / && mount -o remount,bind,ro / '
    '&& exec "$@"'
)


@pytest.mark.skipif(not _mount_namespace_works(), reason="needs a mount namespace (root)")
def test_under_a_read_only_filesystem_the_daemon_needs_tmpdir(
    tree: Path, manifest: Path, tmp_path: Path, watcher: Callable[..., Watcher]
) -> None:
    """As under the systemd units: without TMPDIR a config error, with it a working daemon."""
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    sandbox = ("unshare", "-m", "--propagation", "private", "sh", "-c", READ_ONLY_BUT, "sh")
    no_tmp = ("env", "-u", "TMPDIR", "-u", "TEMP", "-u", "TMP")
    r = integrityd("watch", "-m", manifest, prefix=(*sandbox, str(tmp_path), *no_tmp), timeout=60)
    assert r.returncode == 17, r.stderr
    [line] = r.stderr.splitlines()
    error = json.loads(line)
    assert error["error_type"] == "ConfigError"
    assert error["message"].endswith("set TMPDIR to a directory integrityd may write to")

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    w = watcher("-m", manifest, env={"TMPDIR": str(tmp)}, prefix=(*sandbox, str(tmp_path)))
    w.ready()
    (tree / "a.txt").write_text("changed under a read-only filesystem\n")
    w.wait("modified", tree / "a.txt")
    assert w.stop() == 0
    assert list(tmp.iterdir()) == []


def test_sigterm_to_the_whole_process_group_stops_the_daemon_in_order(
    tree: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """As KillMode=control-group and timeout(1) send it: exit 0, its summary, no error.

    The process server, the collector and the workers get the signal too; they leave
    the stopping to the daemon, which stops them in order.
    """
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    w = watcher("-m", manifest, "--json", new_session=True)
    w.ready()
    w.scanned()
    assert len(descendants(w.proc.pid)) >= 3  # the process server, the collector, a worker
    assert w.stop(group=True) == 0
    assert [e["event"] for e in w.logs if e["level"] in ("warning", "error")] == []
    assert [e["event"]["action"] for e in w.events] == ["summary"]


def test_no_helper_outlives_the_daemon(
    tree: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """The process server and the resource tracker are gone when the daemon's exit is seen.

    systemd SIGKILLs whatever is left in the unit once the main process has exited: a
    helper still shutting down then makes every stop look unclean.
    """
    for _ in range(3):  # it was 2 runs in 3 under systemd
        w = started(tree, manifest, watcher)
        helpers = descendants(w.proc.pid)
        assert helpers, "the daemon has workers, a collector and a process server"
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(timeout=20) == 0
        assert [p for p in helpers if alive(p)] == []
        w.close()
        manifest.unlink()


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("PPid:")[1].split()[0])


def test_a_killed_process_server_ends_the_daemon_cleanly(
    tmp_path: Path, tree: Path, manifest: Path
) -> None:
    """SIGKILL of the forkserver (the OOM killer's choice, say): exit 19, nothing left behind.

    Its children's ends are reported through pipes from it: with it gone every worker
    and the collector read as ended (exit 255) while they lived on. The daemon spawned
    workers beside the orphans and then waited forever for the "dead" collector's
    answer to a ping: it reported nothing more, and under systemd its stop timed out.
    """
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    w = Watcher(tmp_path, "-m", manifest)
    try:
        w.ready()
        w.scanned()
        everyone = descendants(w.proc.pid)
        server = next(
            p
            for p in everyone
            if b"forkserver import main" in Path(f"/proc/{p}/cmdline").read_bytes()
            and _parent(p) == w.proc.pid
        )
        os.kill(server, signal.SIGKILL)
        assert w.proc.wait(timeout=20) == 19
        wait_for(lambda: not any(alive(p) for p in everyone), 10, "no process left")
        errors = [e for e in w.logs if e.get("level") == "error"]
        assert len(errors) == 1, errors
        assert "process server" in errors[0]["message"]
    finally:
        w.close()


def test_reload_waits_for_the_daemon_and_fails_with_its_reason(
    tmp_path: Path, tree: Path, manifest: Path
) -> None:
    """`integrityd reload` (the unit's ExecReload): done when it returns, non-zero if refused.

    With ExecReload=kill -HUP, `systemctl reload` returned before the reload happened,
    and 0 for a config the daemon then refused.
    """
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"manifest: {manifest}\nroots:\n  - path: {tree}\n")
    w = Watcher(tmp_path, "-c", cfg)
    try:
        w.ready()
        r = integrityd("reload", "-c", cfg, "--pid", w.proc.pid)
        assert r.returncode == 0, r.stderr
        assert [e for e in w.logs if e.get("event") == "reloaded"]  # already, not later
        # A mistake in the file: refused before the daemon hears of it.
        cfg.write_text(f"manifest: {manifest}\nroots:\n  - path: {tree}\n    typo: 1\n")
        r = integrityd("reload", "-c", cfg, "--pid", w.proc.pid)
        assert r.returncode == 17
        assert f"{cfg}:4: roots[0].typo" in r.stderr
        # Valid YAML the daemon cannot take (a key file that is not there): its reason.
        cfg.write_text(
            f"manifest: {manifest}\nroots:\n  - path: {tree}\n"
            f"signing:\n  public_key: {tmp_path / 'missing.pub'}\n"
        )
        r = integrityd("reload", "-c", cfg, "--pid", w.proc.pid)
        assert r.returncode == 17
        assert "missing.pub" in r.stderr
        assert len([e for e in w.logs if e.get("event") == "reloaded"]) == 1
        assert w.proc.poll() is None
    finally:
        assert w.stop() == 0
