"""The daemon's full scans: when one starts, what it covers, and when it has ended.

A scan is the daemon's answer to everything that may have hidden a change: the catch-up
at start, events the kernel dropped, a backlog folded away, an observer restarted, a root
back or added, and ``rescan_interval`` (at most ``DEGRADED_RESCAN_S`` while some
directories have no watch). One scan runs at a time; requests made meanwhile wait, merged
per root, and start together when it ends. A scan has ended when the pool is idle: the
live changes handled meanwhile were part of it, which costs nothing in correctness.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Set
from dataclasses import dataclass

from integrityd import logsetup
from integrityd.messages import DirTask, FileTask, Scope
from integrityd.pipeline import WorkerPool

log = logsetup.get_logger()

DEGRADED_RESCAN_S = 600.0  # re-scan interval while some directories cannot be watched


@dataclass(frozen=True, slots=True)
class _Scan:
    reason: str
    started: float
    dirs_before: int


@dataclass(frozen=True, slots=True)
class ScanDone:
    """A scan that ended: how many directories it listed."""

    reason: str
    directories: int


def interval(rescan_interval: float, degraded: bool) -> float:
    """Seconds between periodic scans (0: none), shorter while watches are missing."""
    if not degraded:
        return rescan_interval
    return min(rescan_interval, DEGRADED_RESCAN_S) if rescan_interval else DEGRADED_RESCAN_S


class ScanScheduler:
    """Requests for scans, and the one running; its tasks go to ``pool``."""

    def __init__(self, pool: WorkerPool, now: float) -> None:
        self._pool = pool
        self._current: _Scan | None = None
        self._wanted: dict[int, str] = {}  # scope -> the first reason asked for it
        self._last = now
        self.before_scan: Callable[[], None] = lambda: None  # raises to refuse the scan
        self.started: Counter[str] = Counter()  # scans begun, by reason (metrics)

    @property
    def reason(self) -> str | None:
        """Why the running scan runs; None when none does."""
        return None if self._current is None else self._current.reason

    def request(self, reason: str, scopes: Set[int]) -> None:
        """Scan these scopes when the running scan (if any) has ended."""
        for i in scopes:
            self._wanted.setdefault(i, reason)

    def tick(
        self, now: float, scopes: tuple[Scope, ...], active: Set[int], every: float
    ) -> ScanDone | None:
        """End, request and start scans as due; return the scan that ended, if one did.

        ``every``: the periodic interval (see ``interval``); ``active``: the scopes that
        may be scanned (a request for one removed meanwhile is dropped).
        """
        done = None
        if (scan := self._current) is not None and not self._pool.busy:
            self._current = None
            done = self._finish(scan, now)
        if self._current is None and every and now - self._last >= every:
            self.request("periodic", active)
        if self._current is None and self._wanted:
            wanted, self._wanted = self._wanted, {}
            self.start(next(iter(wanted.values())), set(wanted), scopes, active, now)
        return done

    def start(
        self, reason: str, which: Set[int], scopes: tuple[Scope, ...], active: Set[int], now: float
    ) -> None:
        """Scan ``which`` of the scopes now: each start's entry, then its tree."""
        which = set(which) & set(active)
        if not which:
            return
        self.before_scan()
        self.started[reason] += 1
        self._last = now
        self._current = _Scan(reason, now, self._pool.walked)
        roots = []
        for i in sorted(which):
            start = scopes[i].start
            roots.append(os.fsdecode(start))
            self._pool.submit(FileTask((start,), i))
            if os.path.isdir(start):
                self._pool.submit(DirTask((start,), i))
        log.info("scan_started", reason=reason, roots=roots)

    def _finish(self, scan: _Scan, now: float) -> ScanDone:
        dirs = self._pool.walked - scan.dirs_before
        log.info(
            "scan_finished",
            reason=scan.reason,
            seconds=round(now - scan.started, 3),
            directories=dirs,
        )
        return ScanDone(scan.reason, dirs)
