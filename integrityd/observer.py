"""The daemon's observer and its supervision: watches placed, limits counted, failures healed.

watchdog's ``InotifyObserver`` runs threads of its own that turn inotify events into
``Changes`` (see ``watch``). ``Watches`` places its watches as ``watchplan`` says (within
the kernel's limit, shallow levels first), and answers everything that could make the
daemon miss a change without noticing, each with a log line carrying its numbers and a
request for a scan of what it may have hidden:

* the watch limit, or a directory inotify may not watch, leaving directories unwatched
  (``watches_missing``; scans every ``DEGRADED_RESCAN_S`` from then on);
* the kernel's event queue overflowing (watchdog logs it; ``watch.LostEvents`` hears it);
* one of watchdog's threads dying, or a watch's emitter stopping (the observer restarts);
* a root vanishing (watched again once it is back);
* a storm faster than watchdog hands its events over: its threads queue them in memory
  without a bound (watchdog 7.x), so past ``watch.backlog_memory`` of growth the observer
  is restarted, which drops what it queued, and every root is re-scanned
  (``backlog_memory``).

Directories below one that is watched alone get watches of their own as they appear
(``rewatch_dir``), before they are scanned, so that no change falls between the two.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Set

from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyObserver

from integrityd import logsetup, watchplan
from integrityd.messages import Scope
from integrityd.report import count
from integrityd.schedule import DEGRADED_RESCAN_S
from integrityd.watch import (
    EVENT_FILTER,
    Changes,
    Handler,
    LostEvents,
    Routes,
    queue_limit,
    watch_limit,
)
from integrityd.watchplan import out_of_watches, process_watch_count

log = logsetup.get_logger()

LOST_LOG_S = 10.0  # at most one events_lost warning (and scan request) this often
RECOUNT_S = 10.0  # after a scan found fewer watches than directories, count again then
MEMORY_CHECK_S = 0.25  # how often the process's RSS is compared with its base
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _give_back_memory() -> None:
    """Collect the dropped queues and hand the freed heap back to the kernel.

    Python frees the queues' objects, but glibc keeps the pages for reuse, and the RSS
    would stay where the backlog took it (measured: 49 MiB after a restart, from 37).
    ``malloc_trim`` returns them. ctypes is imported here only: a daemon that never
    meets such a storm does not pay for it.
    """
    import ctypes  # noqa: PLC0415
    import ctypes.util  # noqa: PLC0415
    import gc  # noqa: PLC0415

    gc.collect()
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def own_rss() -> int:
    """The resident set size of this process in bytes (/proc/self/statm, second field)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


RequestScan = Callable[[str, Set[int]], None]


class Watches:
    """The observer, the watches of every active root, and what is known to be unwatched.

    ``request_scan(reason, scopes)`` asks for a scan; ``wake()`` wakes the daemon's loop
    from watchdog's threads. ``start`` places the watches, ``close`` removes them and
    restores the process-wide hooks that ``start`` installed.
    """

    def __init__(
        self,
        changes: Changes,
        scopes: tuple[Scope, ...],
        active: Set[int],
        skip: frozenset[bytes],
        *,
        request_scan: RequestScan,
        wake: Callable[[], None],
        backlog_memory: int = 8 << 20,
    ) -> None:
        self._scopes = scopes
        self._active = frozenset(active)
        self._skip = skip
        self._request_scan = request_scan
        self._wake = wake
        self._handler = Handler(changes, self._routes())
        self._observer = InotifyObserver(generate_full_events=True)
        self._watches: dict[int, dict[bytes, ObservedWatch]] = {}  # per root, by directory
        self._split: dict[bytes, int] = {}  # directories watched alone, by root: see watchplan
        self._unwatched: dict[int, int] = {}  # directories no watch covers, by root
        self._missing: set[int] = set()  # roots that vanished: watched again when back
        self.degraded = False  # some directories have no watch: scans cover them
        self.quiet = False  # stopping: what watchdog's threads trip over is expected
        self._overflowed = 0  # inotify queue overflows heard, counted on watchdog's thread
        self.overflows_total = 0  # those already reported (metrics)
        self._lost_logged_at = -LOST_LOG_S
        self._thread_died = False  # set by threading.excepthook, on the dying thread
        self._undo: list[Callable[[], None]] = []
        self.backlog_memory = backlog_memory
        self._rss_base = 0  # this process's RSS when watching began, or when last relieved
        self._rss_checked = 0.0
        self.relieved = 0  # restarts for memory (metrics)
        self._recount: tuple[float, int, int] | None = None  # (when, directories, watches due)

    # -- start and stop ------------------------------------------------------------------

    def start(self) -> None:
        """Install the hooks that hear watchdog's threads, start the observer, watch."""
        watchdog_log = logging.getLogger("watchdog")
        lost = LostEvents(self._on_overflow, self._forward)
        watchdog_log.addHandler(lost)
        watchdog_log.propagate = False
        hook, threading.excepthook = threading.excepthook, self._thread_failed
        show, warnings.showwarning = warnings.showwarning, _warning

        def undo() -> None:
            watchdog_log.removeHandler(lost)
            watchdog_log.propagate = True
            threading.excepthook = hook
            warnings.showwarning = show

        self._undo.append(undo)
        self._start_observer()

    def close(self) -> None:
        """Stop the observer first (what its threads log on the way out is still heard)."""
        self.quiet = True
        self._stop_observer()
        while self._undo:
            self._undo.pop()()

    def _start_observer(self) -> None:
        self._observer = InotifyObserver(generate_full_events=True)
        self._observer.start()
        self._watches = {}
        self._split = {}
        for i in sorted(self._active):
            self._watch(i)

    def _stop_observer(self) -> None:
        if not self._observer.is_alive():
            return
        quiet, self.quiet = self.quiet, True
        try:
            self._observer.stop()
            self._observer.join(5)
        finally:
            self.quiet = quiet

    # -- placing watches -----------------------------------------------------------------

    def _routes(self) -> Routes:
        return Routes([(i, self._scopes[i]) for i in self._active], self._skip)

    def watched(self, i: int, directory: bytes) -> bool:
        """Whether ``directory`` of root ``i`` has a watch of its own."""
        return directory in self._watches.get(i, {})

    def _watch(self, i: int) -> None:
        """Watch root ``i`` as ``watchplan`` says: within the kernel's limit, shallow first."""
        scope = self._scopes[i]
        path = os.fsdecode(scope.start)
        if not os.path.isdir(scope.start):
            log.error(
                "watch_failed",
                message=f"cannot watch {path}: No such directory; "
                "watching it again once it is back",
                root=path,
            )
            self._missing.add(i)
            self.degraded = True
            return
        self._watches[i] = {}
        self._unwatched[i] = 0
        self._plan(i, scope.start)

    def _plan(self, i: int, start: bytes) -> None:
        """Watch ``start`` (a root, or a directory new below one) as far as the limit allows."""
        root = self._scopes[i].root
        limit = watch_limit()
        plan = watchplan.plan(
            root.path,
            start,
            root.exclude,
            self._skip,
            one_filesystem=root.one_filesystem,
            budget=(1 << 62) if limit is None else limit - watchplan.user_watch_count(),
            groups=watchplan.MAX_GROUPS - sum(map(len, self._watches.values())),
        )
        missed = plan.unwatched
        for directory, recursive, size in plan.watches:
            if not self._schedule(i, directory, recursive=recursive):
                missed += size
        if missed:
            self._unwatched[i] += missed
            self._warn_unwatched(i, plan.directories, missed, limit)

    def _schedule(self, i: int, directory: bytes, *, recursive: bool) -> bool:
        """Schedule one watch of root ``i``; False if the kernel's limits refused it."""
        root = directory == self._scopes[i].start
        try:
            # inotify needs read permission, and watchdog 7.1 places no watch and raises
            # nothing where it is refused (EACCES): ask first, with the effective ids.
            if not os.access(directory, os.R_OK, effective_ids=True):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            watch = self._observer.schedule(
                self._handler,
                os.fsdecode(directory),
                recursive=recursive,
                event_filter=EVENT_FILTER,
            )
        except OSError as e:
            if not out_of_watches(e):
                if root:  # say so: only the scans cover it now
                    log.error(
                        "watch_failed",
                        message=f"cannot watch {os.fsdecode(directory)}: {e.strerror}; "
                        "only scans will cover it",
                        root=os.fsdecode(directory),
                    )
                    self.degraded = True
                return True  # below it, gone or unreadable meanwhile: the scan says which
            if recursive:  # more watches are taken than the plan counted: this one alone
                return self._schedule(i, directory, recursive=False)
            return False
        self._watches[i][directory] = watch
        if not recursive:
            self._split[directory] = i
        return True

    def rewatch_dir(self, i: int, directory: bytes) -> bool:
        """Watch anew a directory below one watched alone; True if it is to be scanned.

        Called for each event on such a directory's own path: it may have been deleted,
        renamed, or replaced by another of the same name (whose inode number may well be
        the same), and a stale watch would leave it unwatched. Dropping the watch and
        planning again costs a walk of the directory, and attribute changes of these few
        directories are rare.
        """
        if directory == self._scopes[i].start or os.path.dirname(directory) not in self._split:
            return False
        watch = self._watches[i].pop(directory, None)
        self._split.pop(directory, None)
        if watch is not None:
            with contextlib.suppress(KeyError):
                self._observer.unschedule(watch)
        if not os.path.isdir(directory) or os.path.islink(directory):
            return False
        self._plan(i, directory)
        return True

    def _warn_unwatched(
        self, i: int | None, dirs: int | None, unwatched: int | None, limit: int | None
    ) -> None:
        self.degraded = True
        root = None if i is None else os.fsdecode(self._scopes[i].start)
        # Counted by the plan: the limit. Found after a scan: the limit, or a directory
        # inotify may not watch (no read permission, a path too long to give it) or that
        # came and went meanwhile.
        what = (
            "some directories cannot be watched (fs.inotify.max_user_watches, no read "
            "permission, or a path longer than PATH_MAX, 4096 bytes)"
            if unwatched is None
            else f"{count(unwatched, 'directory', 'directories')} cannot be watched "
            "(fs.inotify.max_user_watches)"
        )
        log.warning(
            "watches_missing",
            message=f"{what}; changes there are found by a scan every {DEGRADED_RESCAN_S:.0f} s",
            root=root,
            watches=process_watch_count(),
            directories=dirs,
            unwatched=unwatched,
            max_user_watches=limit,
        )

    def scanned(self, directories: int) -> None:
        """After a full scan: every directory it listed should hold a watch; say if not.

        Counted again ``RECOUNT_S`` later before saying so: watchdog adds the watches of
        new directories as its emitter reaches their events, and in a storm it may be
        seconds behind the scan (12,103 directories and 11,102 watches at the end of the
        benchmark's scan, with the rest still queued: measured).
        """
        expected = directories - sum(self._unwatched.values())
        if process_watch_count() < expected:
            self._recount = (time.monotonic() + RECOUNT_S, directories, expected)

    def _recounted(self) -> None:
        if self._recount is None or time.monotonic() < self._recount[0]:
            return
        _, directories, expected = self._recount
        self._recount = None
        if process_watch_count() < expected:
            self._warn_unwatched(None, directories, None, watch_limit())

    # -- supervision ---------------------------------------------------------------------

    def supervise(self) -> None:
        """Restart a dead observer (with a scan), watch again the roots that are back."""
        if self._thread_died or not self._alive():
            self._thread_died = False
            self._restart()
        self._rewatch()
        self._recounted()

    def memory(self, now: float) -> None:
        """Restart the observer if what it queued has grown past ``backlog_memory``.

        watchdog's inotify thread reads the kernel's queue into its own as fast as it can,
        however far its emitters have fallen behind: a creation storm from a fast writer
        took the daemon's main process from 37 to 98 MiB (measured). Restarting drops
        those queues; the re-scan finds whatever they held. Checked four times a second
        (a read of /proc/self/statm); the base is taken again after each restart, as
        Python keeps some of the memory it freed for reuse.
        """
        if now - self._rss_checked < MEMORY_CHECK_S:
            return
        self._rss_checked = now
        rss = own_rss()
        if not self._rss_base:
            self._rss_base = rss
            return
        if rss - self._rss_base <= self.backlog_memory:
            return
        log.warning(
            "backlog_memory",
            message=f"queued events grew the daemon by {(rss - self._rss_base) >> 20} MiB, "
            f"past watch.backlog_memory ({self.backlog_memory >> 20} MiB): dropping them, "
            "watching afresh and re-scanning every root",
            rss_bytes=rss,
            base_bytes=self._rss_base,
        )
        self.relieved += 1
        self._stop_observer()
        _give_back_memory()
        self._start_observer()
        self._request_scan("backlog_memory", self._active)
        # What C's allocator could not give back stays in the RSS (reused by the next
        # backlog); counting from there keeps a restart from following each check.
        self._rss_base = max(self._rss_base, own_rss())

    def lost_events(self, now: float) -> None:
        """Say that the kernel dropped events (once per LOST_LOG_S), and ask for a scan."""
        if not self._overflowed or now - self._lost_logged_at < LOST_LOG_S:
            return
        # In a flood the queue overflows again and again: one line per LOST_LOG_S.
        log.warning(
            "events_lost",
            message="the kernel's inotify queue overflowed and events were lost; "
            "re-scanning every root",
            overflows=self._overflowed,
            max_queued_events=queue_limit(),
        )
        self.overflows_total += self._overflowed
        self._overflowed = 0
        self._lost_logged_at = now
        self._request_scan("events_lost", self._active)

    def _alive(self) -> bool:
        if not self._observer.is_alive():
            return False
        emitters = {e.watch for e in self._observer.emitters if e.is_alive()}
        return all(w in emitters for ws in self._watches.values() for w in ws.values())

    def _restart(self) -> None:
        missing = [os.fsdecode(self._scopes[i].start) for i in self._active if self._gone(i)]
        what = f"roots vanished: {', '.join(missing)}" if missing else "the watching thread died"
        log.error(
            "observer_restarted",
            message=f"{what}; restarting the observer and re-scanning",
            missing_roots=missing,
        )
        self._stop_observer()
        self._start_observer()
        self._request_scan("observer_restarted", self._active)

    def _rewatch(self) -> None:
        """Watch again a root that could not be watched (missing at the time) once it is back."""
        for i in sorted(self._missing & self._active):
            if not self._gone(i):
                self._missing.discard(i)
                self._watch(i)
                if self._watches.get(i):  # a watch is in place: not refused, not gone again
                    log.info("root_watched", root=os.fsdecode(self._scopes[i].start))
                    self._request_scan("root_back", {i})

    def _gone(self, i: int) -> bool:
        return not os.path.isdir(self._scopes[i].start)

    # -- reload --------------------------------------------------------------------------

    def update(
        self, scopes: tuple[Scope, ...], active: Set[int], removed: Set[int], added: Set[int]
    ) -> None:
        """After a reload: forget the removed roots, route events anew, watch the added ones."""
        for i in removed:
            for watch in self._watches.pop(i, {}).values():
                with contextlib.suppress(KeyError):
                    self._observer.unschedule(watch)
            self._split = {d: k for d, k in self._split.items() if k != i}
            self._unwatched.pop(i, None)
        self._scopes = scopes
        self._active = frozenset(active)
        self._handler.routes = self._routes()
        for i in sorted(added):
            self._watch(i)

    # -- what watchdog's threads tell us -------------------------------------------------

    def _on_overflow(self) -> None:
        self._overflowed += 1
        self._wake()

    def _thread_failed(self, args: threading.ExceptHookArgs) -> None:
        """An exception that ends one of watchdog's threads: a log line, then a restart.

        ``supervise`` notices the dead observer within STATUS_S and restarts it with a scan.
        """
        name = args.thread.name if args.thread is not None else "?"
        # While stopping, watchdog's threads may trip over the watches being removed.
        report = log.debug if self.quiet else log.error
        report(
            "thread_failed",
            message=f"the {name} thread stopped: {args.exc_type.__name__}: {args.exc_value}",
            thread=name,
        )
        self._thread_died = True  # any of them: the one reading inotify is not an emitter
        self._wake()

    def _forward(self, record: logging.LogRecord) -> None:
        # Stopping the observer races with its threads, which may then log an error
        # ("queue_events() called when the thread is inactive"): expected, so debug only.
        level = log.debug if self.quiet else log.warning
        level("watchdog", message=record.getMessage(), logger=record.name)


def _warning(  # noqa: PLR0917 - the signature of warnings.showwarning
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """Python warnings (watchdog issues some on races it resolves itself) as JSON lines."""
    del file, line
    text = str(message)
    log.debug(
        "python_warning",
        category=category.__name__,
        message=text if len(text) < 300 else text[:300] + "...",
        source=f"{filename}:{lineno}",
    )
