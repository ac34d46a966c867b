"""The daemon's event loop and its scan schedule, without a daemon around them."""

from __future__ import annotations

import os
import threading
import time

from integrityd.eventloop import Loop
from integrityd.schedule import DEGRADED_RESCAN_S, interval


def test_a_wake_from_another_thread_ends_a_wait_without_a_timeout() -> None:
    """wake() from a thread makes wait(None) return; a wake before the wait is kept."""
    loop = Loop()
    try:
        loop.wake()
        loop.wait(None)  # returns at once: the wake-up was pending
        t = threading.Thread(target=loop.wake)
        started = time.monotonic()
        t.start()
        loop.wait(10.0)
        t.join()
        assert time.monotonic() - started < 5.0
    finally:
        loop.close()
        loop.close()  # idempotent: the daemon's exit paths may close it twice


def test_callbacks_run_for_readable_descriptors_only() -> None:
    """Each readable descriptor's callback runs once per wait; a removed one never again."""
    loop = Loop()
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    calls: list[str] = []
    try:
        loop.add_reader(a_r, lambda: calls.append("a"))
        loop.add_reader(b_r, lambda: calls.append("b"))
        os.write(a_w, b"x")
        loop.wait(5.0)
        assert calls == ["a"]
        loop.remove_reader(a_r)
        os.write(b_w, b"x")
        loop.wait(5.0)
        assert calls == ["a", "b"]
        calls.clear()
        loop.wait(0.01)  # a is still readable but no longer watched; b still readable
        assert calls == ["b"]
    finally:
        loop.close()
        for fd in (a_r, a_w, b_r, b_w):
            os.close(fd)


def test_missing_watches_shorten_the_periodic_scan_interval() -> None:
    """Degraded: at most DEGRADED_RESCAN_S, and a scan even where none was configured."""
    assert interval(0, degraded=False) == 0
    assert interval(3600, degraded=False) == 3600
    assert interval(0, degraded=True) == DEGRADED_RESCAN_S
    assert interval(3600, degraded=True) == DEGRADED_RESCAN_S
    assert interval(60, degraded=True) == 60
