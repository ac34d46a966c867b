"""Watching: watchdog's filesystem events in, settled and de-duplicated paths out.

The observer thread only records which paths need a look (``Changes``); the daemon's
loop takes the due ones and hands them to the hash workers. Three kinds of entry:

* ``FILE``: hash and compare this one path (a file, or a directory entry itself).
* ``DIR``: list one directory and compare its entries, without descending.
* ``TREE``: scan a directory and everything below it (a directory created or moved in).

A file still being written is hashed once, ``settle`` seconds after its last write
(at the latest ``MAX_DELAY_FACTOR`` times that after the first), or at once when its
writer closes it. Memory stays bounded in a storm: past ``max_pending`` entries, new
paths fold into their directory (one listing covers them all), and past that the
root is marked for a full re-scan. Nothing is dropped without something that covers it.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from integrityd.exclude import Excluder
from integrityd.messages import Scope
from integrityd.paths import covers, relative

Kind = Literal["f", "d", "t"]
FILE: Kind = "f"
DIR: Kind = "d"
TREE: Kind = "t"

MAX_DELAY_FACTOR = 30
FOLD_SLACK = 10  # directories may exceed max_pending by a tenth before the root is re-scanned

# Only what changes content or metadata: no IN_OPEN, IN_ACCESS or IN_CLOSE_NOWRITE, so
# the workers' own reads raise no events at all (the kernel does not even queue them).
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileAttribEvent,
    DirAttribEvent,
]


@dataclass(slots=True)
class _Entry:
    scope: int
    first: float
    last: float
    urgent: bool


class Changes:
    """Paths waiting to be hashed; filled by the observer thread, drained by the daemon."""

    def __init__(self, settle: float, max_pending: int, wake: Callable[[], None]) -> None:
        self.settle = settle
        self.max_pending = max_pending
        self._wake = wake
        self._lock = threading.Lock()
        self._entries: dict[tuple[Kind, bytes], _Entry] = {}
        self._heap: list[tuple[float, Kind, bytes]] = []
        self._trees: set[bytes] = set()
        self._dirs: set[bytes] = set()
        self.rescan: set[int] = set()  # scopes to re-scan whole: too much to hold path by path
        self.folded = 0  # directory listings that took the place of single paths

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, kind: Kind, path: bytes, scope: int, *, quick: bool) -> None:
        """Note that ``path`` changed; ``quick``: the change is complete (closed, moved, gone)."""
        now = time.monotonic()
        with self._lock:
            if scope in self.rescan or self._covered(kind, path):
                return
            key = (kind, path)
            entry = self._entries.get(key)
            if entry is None:
                if len(self._entries) >= self.max_pending:
                    self._fold(kind, path, scope, now)
                    return
                self._entries[key] = _Entry(scope, now, now, quick)
                if kind == TREE:
                    self._trees.add(path)
                elif kind == DIR:
                    self._dirs.add(path)
                heapq.heappush(self._heap, (now if quick else now + self.settle, kind, path))
            else:
                entry.last = now
                if quick and not entry.urgent:
                    entry.urgent = True
                    heapq.heappush(self._heap, (now, kind, path))
        if quick or self.settle == 0:
            self._wake()

    def _covered(self, kind: Kind, path: bytes) -> bool:
        """True if a pending directory listing or tree scan already includes ``path``."""
        parent = os.path.dirname(path)
        if kind == FILE and parent in self._dirs:
            return True
        if not self._trees:
            return False
        p = path if kind != TREE else parent
        while True:
            if p in self._trees:
                return True
            up = os.path.dirname(p)
            if up == p:
                return False
            p = up

    def _fold(self, kind: Kind, path: bytes, scope: int, now: float) -> None:
        self.folded += 1
        if kind == FILE and len(self._entries) < self.max_pending + self.max_pending // FOLD_SLACK:
            parent = os.path.dirname(path)  # not pending: _covered() would have said so
            self._entries[(DIR, parent)] = _Entry(scope, now, now, False)
            self._dirs.add(parent)
            heapq.heappush(self._heap, (now + self.settle, DIR, parent))
            return
        self.rescan.add(scope)  # a directory, or too many of them: the whole root
        self._drop({scope})

    def due(self, limit: int) -> list[tuple[Kind, bytes, int]]:
        """Up to ``limit`` entries whose time has come, removed from the pending set."""
        now = time.monotonic()
        out: list[tuple[Kind, bytes, int]] = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now and len(out) < limit:
                _, kind, path = heapq.heappop(self._heap)
                entry = self._entries.get((kind, path))
                if entry is None:
                    continue  # taken already through an earlier heap item
                if not entry.urgent:
                    ready = min(
                        entry.last + self.settle, entry.first + self.settle * MAX_DELAY_FACTOR
                    )
                    if ready > now:
                        heapq.heappush(self._heap, (ready, kind, path))  # written since: wait on
                        continue
                del self._entries[(kind, path)]
                if kind == TREE:
                    self._trees.discard(path)
                elif kind == DIR:
                    self._dirs.discard(path)
                out.append((kind, path, entry.scope))
        return out

    def next_due(self) -> float | None:
        """Seconds until the next entry may be due (0: now), or None if none is pending."""
        with self._lock:
            if not self._heap:
                return None
            return max(0.0, self._heap[0][0] - time.monotonic())

    def take_rescans(self) -> set[int]:
        """Scopes that overflowed and need a full scan; clears the set."""
        with self._lock:
            out, self.rescan = self.rescan, set()
            return out

    def drop(self, scopes: set[int]) -> None:
        """Forget the pending paths of these scopes (removed roots, or a full scan coming)."""
        with self._lock:
            self._drop(scopes)

    def _drop(self, scopes: set[int]) -> None:
        for key in [k for k, e in self._entries.items() if e.scope in scopes]:
            del self._entries[key]
            (self._trees if key[0] == TREE else self._dirs).discard(key[1])
        self._heap = [item for item in self._heap if (item[1], item[2]) in self._entries]
        heapq.heapify(self._heap)


class Routes:
    """Which scope a path belongs to, or None when it is outside every root or excluded."""

    def __init__(self, scopes: Sequence[tuple[int, Scope]], skip: frozenset[bytes]) -> None:
        self._roots = sorted(
            ((s.root.path, i, Excluder(s.root.exclude)) for i, s in scopes),
            key=lambda r: len(r[0]),
            reverse=True,
        )
        self._skip = skip

    def find(self, path: bytes, is_dir: bool) -> int | None:
        """The scope for ``path``; the innermost root wins."""
        if path in self._skip:
            return None
        for root, scope, excluder in self._roots:
            if covers(root, path):
                if excluder and excluder.excludes(relative(root, path), is_dir):
                    return None
                return scope
        return None


class Handler(FileSystemEventHandler):
    """Turns watchdog's events into ``Changes`` entries; runs on the observer thread."""

    def __init__(self, changes: Changes, routes: Routes) -> None:
        self.changes = changes
        self.routes = routes  # replaced whole on reload; reading one attribute is atomic

    def on_any_event(self, event: FileSystemEvent) -> None:
        """Route every event; see the module docstring for what each one schedules."""
        src = os.fsencode(event.src_path)
        kind = event.event_type
        if kind == "moved":
            dest = os.fsencode(event.dest_path)
            if src:
                self._add(FILE, src, event.is_directory, quick=True)  # gone from here
            if dest:
                self._add(FILE, dest, event.is_directory, quick=True)
                if event.is_directory:
                    self._add(TREE, dest, True, quick=True)
        elif kind == "created":
            self._add(FILE, src, event.is_directory, quick=event.is_directory)
            if event.is_directory:
                # Wait for the copy to settle: events below it until then are covered by it.
                self._add(TREE, src, True, quick=False)
        elif kind == "modified":
            self._add(FILE, src, event.is_directory, quick=False)
        else:  # deleted, closed (after writing), attrib: the change is complete
            self._add(FILE, src, event.is_directory, quick=True)

    def _add(self, kind: Kind, path: bytes, is_dir: bool, *, quick: bool) -> None:
        scope = self.routes.find(path, is_dir)
        if scope is not None:
            self.changes.add(kind, path, scope, quick=quick)


class LostEvents(logging.Handler):
    """Hears watchdog's own log: the only place it reports an inotify queue overflow.

    watchdog rebuilds its watches after an overflow but cannot bring back the events the
    kernel dropped; ``on_overflow`` lets the daemon re-scan. Other records are passed
    on to ``forward`` so that they appear as structured log lines like ours.
    """

    def __init__(
        self, on_overflow: Callable[[], None], forward: Callable[[logging.LogRecord], None]
    ) -> None:
        super().__init__(logging.WARNING)
        self._on_overflow = on_overflow
        self._forward = forward

    def emit(self, record: logging.LogRecord) -> None:
        """Called by ``logging`` for each watchdog record at WARNING or above."""
        if "overflow" in record.getMessage().lower():
            self._on_overflow()
        else:
            self._forward(record)


def watch_limit() -> int | None:
    """The lowest inotify watch limit that applies (system-wide, and this user namespace's)."""
    paths = ("/proc/sys/fs/inotify/max_user_watches", "/proc/sys/user/max_inotify_watches")
    return min((n for n in map(_proc_int, paths) if n is not None), default=None)


def queue_limit() -> int | None:
    """How many events the kernel queues per inotify instance before it drops them."""
    return _proc_int("/proc/sys/fs/inotify/max_queued_events")


def _proc_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None
