"""Composition root of the daemon (``integrityd watch``): real time on the audit's pipeline.

Data flow::

    watchdog observer thread ──> Changes: settled, de-duplicated, bounded
                                    │  due paths, batched
    main loop ──── FileTask / DirTask ──> worker xN: hash, compare ──> collector ──> stdout
        │  full scans: at start (catch-up), every rescan_interval, after lost events
        └─ signals (TERM/INT: stop, HUP: reload) and sd_notify (READY, STATUS, WATCHDOG)

Watching begins before the catch-up scan does, so a change made during the scan is
seen by the scan, by an event, or by both (the collector reports it once). The daemon
never writes the manifest: the baseline changes only when a person runs ``accept``.

Everything that could make it miss a change without noticing is checked for: the
kernel's event queue overflowing (watchdog logs it; see ``watch.LostEvents``), the
watch limit leaving directories unwatched (the kernel's count of watches, against the
directories the scan walked), the observer thread dying, a root vanishing. Each is
logged with its numbers and answered with a scan of what it may have hidden.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
import warnings
from collections import defaultdict
from types import FrameType

from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyObserver

from integrityd import collector, config, configfile, logsetup, scan, watchplan
from integrityd.config import Config
from integrityd.errors import IntegritydError, ManifestLocked, RootError
from integrityd.manifest import journal_files
from integrityd.messages import DirTask, FileTask, Job, LiveStats, Ping, Scope, Task
from integrityd.notify import Notifier
from integrityd.paths import covers
from integrityd.pipeline import CollectorHandle, WorkerPool
from integrityd.reloadplan import plan_reload
from integrityd.report import count
from integrityd.scopes import resolve_scopes
from integrityd.watch import (
    EVENT_FILTER,
    FILE,
    TREE,
    Changes,
    Handler,
    LostEvents,
    Routes,
    queue_limit,
    watch_limit,
)
from integrityd.watchplan import out_of_watches, process_watch_count

log = logsetup.get_logger()

TICK_S = 1.0  # the loop wakes at least this often, for timers and the watchdog
STATUS_S = 2.0  # STATUS= updates and collector pings
DEGRADED_RESCAN_S = 600.0  # re-scan interval while some directories cannot be watched
LOST_LOG_S = 10.0  # at most one events_lost warning (and scan request) this often
BATCH = 64  # paths per FileTask in a flood; a single change goes alone, for latency


def lock_path(manifest: bytes) -> bytes:
    """The file whose lock says that a daemon watches this manifest."""
    return manifest + b"-watch.lock"


def _take_lock(manifest: bytes) -> int:
    """Refuse to run twice on one manifest: two daemons would report everything twice."""
    path = lock_path(manifest)
    name = os.fsdecode(manifest)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ManifestLocked(
            f"cannot create the lock file {os.fsdecode(path)}: {e.strerror}"
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ManifestLocked(
            f"another integrityd watch (pid {holder}) is already watching manifest {name}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclasses.dataclass
class _Scan:
    reason: str
    started: float
    dirs_before: int


class Daemon:
    """One run of ``integrityd watch``; ``run()`` returns the exit code."""

    def __init__(
        self, config_path: str | None, cfg: Config, manifest: bytes, json_out: bool
    ) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.manifest = manifest
        self.json_out = json_out
        self.notifier = Notifier()
        self.workers = cfg.worker_count()
        self.stop_signal: int | None = None
        self.reload_wanted = False
        self.overflowed = 0  # inotify queue overflows heard, set from watchdog's thread
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.changes = Changes(cfg.watch.settle, cfg.watch.max_pending, self._wake)
        self.job: Job | None = None
        self.active: set[int] = set()  # scope indices being watched; removed ones keep theirs
        self.watches: dict[int, dict[bytes, ObservedWatch]] = {}  # per root, by directory
        self.split: dict[bytes, int] = {}  # directories watched alone, by root: see watchplan
        self.unwatched: dict[int, int] = {}  # directories no watch covers, by root
        self.missing: set[int] = set()  # roots that vanished: watched again when back
        self.observer: InotifyObserver | None = None
        self.handler: Handler | None = None
        self.pool: WorkerPool | None = None
        self.handle: CollectorHandle | None = None
        self.scan: _Scan | None = None
        self.scan_wanted: dict[int, str] = {}
        self.last_scan = time.monotonic()
        self.degraded = False
        self.stats = LiveStats(0, 0)
        self.stats_at = time.monotonic()
        self.status_at = 0.0
        self.watchdog_at = 0.0
        self.lock: int | None = None
        self.thread_died = False  # set by threading.excepthook, from the dying thread
        self.observer_stopping = False  # set while watchdog's threads are being stopped
        self.lost_logged_at = -LOST_LOG_S

    # -- start and stop ------------------------------------------------------------------

    def run(self) -> int:
        """Watch until SIGTERM or SIGINT; raise IntegritydError on what cannot go on."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_signal)
        watchdog_log = logging.getLogger("watchdog")
        lost = LostEvents(self._on_overflow, self._forward)
        watchdog_log.addHandler(lost)
        watchdog_log.propagate = False
        hook, threading.excepthook = threading.excepthook, self._thread_failed
        show, warnings.showwarning = warnings.showwarning, self._warning
        try:
            return self._run()
        finally:
            self._stop_observer()  # first: what its threads log on the way out is ours to show
            watchdog_log.removeHandler(lost)
            watchdog_log.propagate = True
            if self.pool is not None:
                self.pool.stop(graceful=False)  # they only read: nothing to lose, and fast
            if self.handle is not None:
                self.handle.close()
            if self.lock is not None:
                os.close(self.lock)
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.notifier.close()
            for s, h in old.items():
                signal.signal(s, h)
            threading.excepthook = hook
            warnings.showwarning = show

    def _run(self) -> int:
        scopes = self._resolve(self.cfg)
        self.lock = _take_lock(self.manifest)
        self.job = Job(
            command="watch",
            manifest=self.manifest,
            scopes=scopes,
            skip=journal_files(self.manifest) | {lock_path(self.manifest)},
            json=self.json_out,
            progress=False,
            log=self.cfg.log,
        )
        self.active = set(range(len(scopes)))
        ctx = multiprocessing.get_context("forkserver")  # cli starts it early, with a preload
        self.handle = CollectorHandle(ctx, collector.run, self.job)
        self.pool = WorkerPool(
            ctx,
            count=self.workers,
            target=scan.worker_main,
            args=(self.job, self.cfg.chunk_size, None, False),
            deliver=self.handle.send_bytes,
            on_lost=self._lost,
            guard=self.handle.guard,
            on_guard=self._collector_spoke,
        )
        self.pool.start()
        self.pool.add_reader(self.wake_r, self._drain)
        self.handler = Handler(self.changes, self._routes())
        self._start_observer()
        self.notifier.send(READY=1, STATUS=self._status())
        log.info(
            "watching",
            message=f"watching {count(len(scopes), 'root')} with {count(self.workers, 'worker')}",
            roots=[os.fsdecode(s.start) for s in scopes],
            watches=process_watch_count(),
        )
        self._start_scan("startup", self.active)
        self._loop()
        self.notifier.send(STOPPING=1, STATUS="stopping")
        log.info("stopping", signal=self.stop_signal)
        self.pool.stop(graceful=False)
        self.pool = None
        self.handle.finish()
        return 0

    def _resolve(self, cfg: Config) -> tuple[Scope, ...]:
        scopes = resolve_scopes("watch", cfg, self.manifest, [])
        for s in scopes:
            if not os.path.isdir(s.start):
                raise RootError(f"root {os.fsdecode(s.start)} is not a directory; watch needs one")
        return scopes

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_wanted = True
        else:
            self.stop_signal = signum
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self.wake_w, b"\0")

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 4096):
                pass

    def _on_overflow(self) -> None:
        self.overflowed += 1
        self._wake()

    def _thread_failed(self, args: threading.ExceptHookArgs) -> None:
        """An exception that ends one of watchdog's threads: a log line, then a restart.

        The loop notices the dead observer within STATUS_S and restarts it with a scan.
        """
        name = args.thread.name if args.thread is not None else "?"
        # While stopping, watchdog's threads may trip over the watches being removed.
        report = log.debug if self.stop_signal is not None else log.error
        report(
            "thread_failed",
            message=f"the {name} thread stopped: {args.exc_type.__name__}: {args.exc_value}",
            thread=name,
        )
        self.thread_died = True  # any of them: the one reading inotify is not an emitter
        self._wake()

    @staticmethod
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

    def _forward(self, record: logging.LogRecord) -> None:
        # Stopping the observer races with its threads, which may then log an error
        # ("queue_events() called when the thread is inactive"): expected, so debug only.
        level = log.debug if self.observer_stopping else log.warning
        level("watchdog", message=record.getMessage(), logger=record.name)

    # -- the observer --------------------------------------------------------------------

    def _routes(self) -> Routes:
        assert self.job is not None
        return Routes([(i, self.job.scopes[i]) for i in self.active], self.job.skip)

    def _start_observer(self) -> None:
        self.observer = InotifyObserver(generate_full_events=True)
        self.observer.start()
        self.watches = {}
        self.split = {}
        for i in sorted(self.active):
            self._watch(i)

    def _watch(self, i: int) -> None:
        """Watch root ``i`` as ``watchplan`` says: within the kernel's limit, shallow first."""
        assert self.job is not None
        scope = self.job.scopes[i]
        path = os.fsdecode(scope.start)
        if not os.path.isdir(scope.start):
            log.error(
                "watch_failed",
                message=f"cannot watch {path}: No such directory; "
                "watching it again once it is back",
                root=path,
            )
            self.missing.add(i)
            self.degraded = True
            return
        self.watches[i] = {}
        self.unwatched[i] = 0
        self._plan(i, scope.start)

    def _plan(self, i: int, start: bytes) -> None:
        """Watch ``start`` (a root, or a directory new below one) as far as the limit allows."""
        assert self.job is not None
        root = self.job.scopes[i].root
        limit = watch_limit()
        plan = watchplan.plan(
            root.path,
            start,
            root.exclude,
            self.job.skip,
            one_filesystem=root.one_filesystem,
            budget=(1 << 62) if limit is None else limit - watchplan.user_watch_count(),
            groups=watchplan.MAX_GROUPS - sum(map(len, self.watches.values())),
        )
        missed = plan.unwatched
        for directory, recursive, size in plan.watches:
            if not self._schedule(i, directory, recursive=recursive):
                missed += size
        if missed:
            self.unwatched[i] += missed
            self._unwatched(i, plan.directories, missed, limit)

    def _schedule(self, i: int, directory: bytes, *, recursive: bool) -> bool:
        """Schedule one watch of root ``i``; False if the kernel's limits refused it."""
        assert self.observer is not None and self.handler is not None and self.job is not None
        root = directory == self.job.scopes[i].start
        try:
            # inotify needs read permission, and watchdog 7.1 places no watch and raises
            # nothing where it is refused (EACCES): ask first, with the effective ids.
            if not os.access(directory, os.R_OK, effective_ids=True):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            watch = self.observer.schedule(
                self.handler, os.fsdecode(directory), recursive=recursive, event_filter=EVENT_FILTER
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
        self.watches[i][directory] = watch
        if not recursive:
            self.split[directory] = i
        return True

    def _rewatch_dir(self, i: int, directory: bytes) -> bool:
        """Watch anew a directory below one watched alone; True if it is to be scanned.

        Called for each event on such a directory's own path: it may have been deleted,
        renamed, or replaced by another of the same name (whose inode number may well be
        the same), and a stale watch would leave it unwatched. Dropping the watch and
        planning again costs a walk of the directory, and attribute changes of these few
        directories are rare.
        """
        assert self.job is not None
        if directory == self.job.scopes[i].start or os.path.dirname(directory) not in self.split:
            return False
        watch = self.watches[i].pop(directory, None)
        self.split.pop(directory, None)
        if watch is not None and self.observer is not None:
            with contextlib.suppress(KeyError):
                self.observer.unschedule(watch)
        if not os.path.isdir(directory) or os.path.islink(directory):
            return False
        self._plan(i, directory)
        return True

    def _stop_observer(self) -> None:
        if self.observer is not None:
            self.observer_stopping = True
            try:
                self.observer.stop()
                self.observer.join(5)
            finally:
                self.observer_stopping = False
            self.observer = None

    def _unwatched(
        self, i: int | None, dirs: int | None, unwatched: int | None, limit: int | None
    ) -> None:
        self.degraded = True
        root = None if i is None or self.job is None else os.fsdecode(self.job.scopes[i].start)
        # Counted by the plan: the limit. Found after a scan: the limit, or a directory
        # inotify may not watch (no read permission) or that came and went meanwhile.
        what = (
            "some directories cannot be watched (fs.inotify.max_user_watches, or no read "
            "permission)"
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

    def _observer_alive(self) -> bool:
        if self.observer is None or not self.observer.is_alive():
            return False
        emitters = {e.watch for e in self.observer.emitters if e.is_alive()}
        return all(w in emitters for ws in self.watches.values() for w in ws.values())

    def _restart_observer(self) -> None:
        missing = [
            os.fsdecode(self.job.scopes[i].start) for i in self.active if self._gone(i)
        ] if self.job else []  # fmt: skip
        what = f"roots vanished: {', '.join(missing)}" if missing else "the watching thread died"
        log.error(
            "observer_restarted",
            message=f"{what}; restarting the observer and re-scanning",
            missing_roots=missing,
        )
        self._stop_observer()
        self._start_observer()
        self._request_scan("observer_restarted", self.active)

    def _rewatch(self) -> None:
        """Watch again a root that could not be watched (missing at the time) once it is back."""
        for i in sorted(self.missing & self.active):
            if not self._gone(i):
                self.missing.discard(i)
                self._watch(i)
                if self.watches.get(i):  # a watch is in place: not refused, not gone again
                    assert self.job is not None
                    log.info("root_watched", root=os.fsdecode(self.job.scopes[i].start))
                    self._request_scan("root_back", {i})

    def _gone(self, i: int) -> bool:
        assert self.job is not None
        return not os.path.isdir(self.job.scopes[i].start)

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        assert self.pool is not None
        while self.stop_signal is None:
            if self.reload_wanted:
                self.reload_wanted = False
                self._reload()
            self._feed()
            self._housekeeping()
            self.pool.step(self._timeout())

    def _timeout(self) -> float:
        due = self.changes.next_due()
        timeout = TICK_S if due is None else min(TICK_S, due)
        if self.notifier.watchdog_s is not None:
            timeout = min(timeout, self.notifier.watchdog_s)
        return timeout

    def _feed(self) -> None:
        """Turn due changes into tasks, a few per worker: the rest wait, merged, in Changes."""
        assert self.pool is not None and self.job is not None
        room = 2 * self.workers - self.pool.urgent_backlog
        if room <= 0:
            return
        files: dict[int, list[bytes]] = defaultdict(list)
        for kind, path, i in self.changes.due(room * BATCH):
            if i not in self.active:
                continue
            root = self.job.scopes[i].root.path
            if kind == FILE:
                files[i].append(path)
                if path in self.watches[i] and self._rewatch_dir(i, path):
                    self.pool.submit(DirTask((path,), i, recursive=True), urgent=True)
            elif covers(root, path):
                if kind == TREE:  # watched before it is scanned: no change falls between
                    self._rewatch_dir(i, path)
                self.pool.submit(DirTask((path,), i, recursive=kind == TREE), urgent=True)
            else:
                files[i].append(root)  # folded from the root's own entry into its parent
        for i, paths in files.items():
            size = max(1, min(BATCH, math.ceil(len(paths) / self.workers)))
            for k in range(0, len(paths), size):
                self.pool.submit(FileTask(tuple(paths[k : k + size]), i), urgent=True)

    def _housekeeping(self) -> None:
        assert self.pool is not None
        now = time.monotonic()
        if self.scan is not None and not self.pool.busy:
            self._scan_done(now)
        if self.overflowed and now - self.lost_logged_at >= LOST_LOG_S:
            # In a flood the queue overflows again and again: one line per LOST_LOG_S.
            log.warning(
                "events_lost",
                message="the kernel's inotify queue overflowed and events were lost; "
                "re-scanning every root",
                overflows=self.overflowed,
                max_queued_events=queue_limit(),
            )
            self.overflowed = 0
            self.lost_logged_at = now
            self._request_scan("events_lost", self.active)
        if over := self.changes.take_rescans():
            log.warning(
                "backlog_full",
                message=f"more than {self.cfg.watch.max_pending:,} paths waited to be hashed; "
                "re-scanning the roots they belong to instead",
                folded=self.changes.folded,
            )
            self._request_scan("backlog_full", over)
        interval = self.cfg.watch.rescan_interval
        if self.degraded:
            interval = min(interval, DEGRADED_RESCAN_S) if interval else DEGRADED_RESCAN_S
        if self.scan is None and interval and now - self.last_scan >= interval:
            self._request_scan("periodic", self.active)
        if self.scan is None and self.scan_wanted:
            wanted, self.scan_wanted = self.scan_wanted, {}
            self._start_scan(next(iter(wanted.values())), set(wanted))
        if now - self.status_at >= STATUS_S or (
            self.notifier.watchdog_s and now - self.status_at >= self.notifier.watchdog_s
        ):
            self.status_at = now
            if self.thread_died or not self._observer_alive():
                self.thread_died = False
                self._restart_observer()
            self._rewatch()
            assert self.handle is not None
            self.handle.send(Ping())
            self.notifier.send(STATUS=self._status())
        self._watchdog(now)

    def _watchdog(self, now: float) -> None:
        """WATCHDOG=1 only while the collector answers: a stuck pipeline stops the pings."""
        interval = self.notifier.watchdog_s
        if interval is None or now - self.watchdog_at < interval:
            return
        if now - self.stats_at <= 2 * max(interval, STATUS_S) + TICK_S:
            self.notifier.send(WATCHDOG=1)
            self.watchdog_at = now

    def _collector_spoke(self) -> None:
        assert self.handle is not None
        self.stats = self.handle.stats()  # anything but stats (a failure, EOF) raises
        self.stats_at = time.monotonic()

    def _status(self) -> str:
        scanning = f"; scanning ({self.scan.reason})" if self.scan else ""
        return (
            f"watching {count(len(self.active), 'root')}; "
            f"{count(self.stats.files, 'file')} checked, "
            f"{self.stats.findings:,} findings; {len(self.changes):,} paths pending{scanning}"
        )

    def _lost(self, task: Task, reason: str) -> None:
        assert self.handle is not None
        self.handle.send(scan.lost_report(task, reason))

    # -- scans ---------------------------------------------------------------------------

    def _request_scan(self, reason: str, scopes: set[int]) -> None:
        for i in scopes:
            self.scan_wanted.setdefault(i, reason)

    def _start_scan(self, reason: str, scopes: set[int]) -> None:
        assert self.pool is not None and self.job is not None
        scopes = scopes & self.active
        if not scopes:
            return
        self.last_scan = time.monotonic()
        self.scan = _Scan(reason, self.last_scan, self.pool.walked)
        roots = []
        for i in sorted(scopes):
            start = self.job.scopes[i].start
            roots.append(os.fsdecode(start))
            self.pool.submit(FileTask((start,), i))
            if os.path.isdir(start):
                self.pool.submit(DirTask((start,), i))
        log.info("scan_started", reason=reason, roots=roots)

    def _scan_done(self, now: float) -> None:
        assert self.scan is not None and self.pool is not None
        dirs = self.pool.walked - self.scan.dirs_before
        log.info(
            "scan_finished",
            reason=self.scan.reason,
            seconds=round(now - self.scan.started, 3),
            directories=dirs,
        )
        self.scan = None
        held = process_watch_count()
        if held < dirs - sum(self.unwatched.values()):  # every directory walked should hold one
            self._unwatched(None, dirs, None, watch_limit())

    # -- reload --------------------------------------------------------------------------

    def _reload(self) -> None:
        """SIGHUP: re-read the config; roots come and go without a restart."""
        assert self.job is not None and self.pool is not None and self.handle is not None
        self.notifier.reloading()
        try:
            cfg = configfile.load(self.config_path) if self.config_path else config.Config()
            scopes = self._resolve(cfg)
        except IntegritydError as e:
            log.error(
                "reload_failed",
                message=f"{e}; still running with the previous config",
                error_type=type(e).__name__,
            )
            self.notifier.send(READY=1, STATUS=self._status())
            return
        plan = plan_reload(self.job.scopes, frozenset(self.active), self.cfg, cfg, scopes)
        if plan.restart_needed:
            log.warning(
                "reload_partial", message="these settings need a restart", keys=plan.restart_needed
            )
        added, removed = plan.added, plan.removed
        self.job = dataclasses.replace(
            self.job, scopes=plan.scopes, log=cfg.log, json=self.json_out
        )
        logsetup.configure(cfg.log)  # here; the workers and the collector on the new Job
        log.debug("reconfigured", process="main", pid=os.getpid())
        self.cfg = plan.config
        self.changes.settle = cfg.watch.settle
        self.changes.max_pending = cfg.watch.max_pending
        self.pool.reconfigure(self.job)
        self.handle.send(self.job)
        for i in removed:
            for watch in self.watches.pop(i, {}).values():
                if self.observer is not None:
                    self.observer.unschedule(watch)
            self.split = {d: k for d, k in self.split.items() if k != i}
            self.unwatched.pop(i, None)
        self.active = set(plan.active)
        self.pool.discard(set(removed))
        self.changes.drop(set(removed))
        assert self.handler is not None
        self.handler.routes = self._routes()
        for i in sorted(added):
            self._watch(i)
        log.info(
            "reloaded",
            added=[os.fsdecode(plan.scopes[i].start) for i in sorted(added)],
            removed=[os.fsdecode(plan.scopes[i].start) for i in sorted(removed)],
        )
        self._request_scan("root_added", set(added))
        self.notifier.send(READY=1, STATUS=self._status())


def run(config_path: str | None, cfg: Config, manifest: bytes, json_out: bool) -> int:
    """Run the daemon; the exit code is 0 after SIGTERM or SIGINT."""
    return Daemon(config_path, cfg, manifest, json_out).run()
