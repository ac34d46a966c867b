"""watch.Changes: the daemon's pending paths, settled, de-duplicated and bounded."""

from __future__ import annotations

import threading
import time

from integrityd.watch import DIR, FILE, TREE, Changes

from .conftest import wait_for


def make(settle: float = 0.2, max_pending: int = 1000) -> tuple[Changes, list[int]]:
    wakes: list[int] = []
    return Changes(settle, max_pending, lambda: wakes.append(1)), wakes


def test_complete_changes_are_due_at_once_others_after_settling() -> None:
    """A closed file is hashed at once (and wakes the loop); one still written waits to settle."""
    c, wakes = make(settle=0.3)
    c.add(FILE, b"/r/closed", 0, quick=True)
    c.add(FILE, b"/r/written", 0, quick=False)
    assert c.due(10) == [(FILE, b"/r/closed", 0)]
    assert wakes == [1]  # the daemon's loop is woken for complete changes only
    start = time.monotonic()
    got = wait_for(lambda: c.due(10), timeout=5, what="the settled file")
    assert got == [(FILE, b"/r/written", 0)]
    assert time.monotonic() - start >= 0.2
    assert len(c) == 0


def test_many_writes_make_one_entry_and_a_close_ends_the_wait() -> None:
    """A thousand writes to one file are one pending entry; closing it makes it due at once."""
    c, _ = make(settle=60)
    for _ in range(1000):
        c.add(FILE, b"/r/log", 0, quick=False)
    assert len(c) == 1
    assert c.due(10) == []
    c.add(FILE, b"/r/log", 0, quick=True)  # the writer closed it
    assert c.due(10) == [(FILE, b"/r/log", 0)]
    assert c.due(10) == []


def test_paths_below_a_pending_directory_scan_are_covered_by_it() -> None:
    """A pending tree scan covers everything below it, a directory listing its own entries."""
    c, _ = make(settle=60)
    c.add(TREE, b"/r/new", 0, quick=False)
    c.add(FILE, b"/r/new/a/b/c", 0, quick=True)
    c.add(TREE, b"/r/new/a", 0, quick=True)
    c.add(DIR, b"/r/other", 0, quick=False)
    c.add(FILE, b"/r/other/x", 0, quick=True)
    c.add(FILE, b"/r/other/sub/y", 0, quick=True)  # not in the listing of /r/other
    assert len(c) == 3
    assert c.due(10) == [(FILE, b"/r/other/sub/y", 0)]


def test_a_flood_folds_into_directories_then_into_a_root_scan() -> None:
    """Past max_pending, paths fold into directory listings, and past a tenth more, a scan."""
    c, _ = make(settle=0, max_pending=100)
    for i in range(100):
        c.add(FILE, b"/r/fill/%d" % i, 0, quick=False)
    for d in range(5):
        for i in range(20):
            c.add(FILE, b"/r/d%d/%d" % (d, i), 0, quick=False)
    assert len(c) == 105  # the first 100 paths, then one listing per directory
    assert c.folded == 5  # one listing per directory; its other paths are covered by it
    assert {(k, p) for k, p, _ in c.due(1000) if k == DIR} == {
        (DIR, b"/r/d%d" % d) for d in range(5)
    }
    for i in range(120):  # fill again, past the slack: the root is scanned instead
        c.add(FILE, b"/r/e%d/x" % i, 0, quick=False)
    c.add(FILE, b"/other-root/y", 1, quick=False)
    assert c.take_rescans() == {0}
    assert {s for _, _, s in c.due(1000)} == {1}  # scope 0's paths were dropped


def test_threads_adding_while_the_loop_drains_lose_nothing() -> None:
    """Four threads adding while the loop drains: every path comes out exactly once."""
    c, _ = make(settle=0, max_pending=100_000)
    paths = [b"/r/%d/%d" % (t, i) for t in range(4) for i in range(2000)]

    def add(t: int) -> None:
        for i in range(2000):
            c.add(FILE, b"/r/%d/%d" % (t, i), 0, quick=True)

    threads = [threading.Thread(target=add, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    seen: list[bytes] = []

    def drained() -> bool:
        seen.extend(p for _, p, _ in c.due(500))
        return len(seen) == len(paths)

    wait_for(drained, timeout=30, what="every path")
    for t in threads:
        t.join()
    assert sorted(seen) == sorted(paths)
