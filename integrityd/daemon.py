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

The parts, each in its own module: ``observer`` (watchdog's observer, the watches
within the kernel's limits, and everything that could make the daemon miss a change
without noticing), ``schedule`` (full scans: when, of what, and when one has ended),
``heartbeat`` (STATUS=, collector pings, systemd's watchdog), ``reloadplan`` (what a
SIGHUP changes, worked out without I/O), and ``eventloop`` (the one epoll set the main
loop waits in). This module builds them, then runs the loop that joins them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import multiprocessing
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

from integrityd import collector, config, configfile, logsetup, metrics, scan, schedule, seal
from integrityd.config import Config
from integrityd.errors import IntegritydError, ManifestLocked, RootError
from integrityd.eventloop import Loop
from integrityd.heartbeat import TICK_S, Heartbeat
from integrityd.manifest import ManifestStore, journal_files
from integrityd.messages import DirTask, FileTask, Job, Scope
from integrityd.notify import Notifier
from integrityd.observer import Watches
from integrityd.paths import covers
from integrityd.pipeline import CollectorHandle, WorkerPool
from integrityd.reloadplan import plan_reload
from integrityd.report import count
from integrityd.schedule import ScanScheduler
from integrityd.scopes import resolve_scopes
from integrityd.watch import FILE, TREE, Changes, watch_limit
from integrityd.watchplan import process_watch_count

log = logsetup.get_logger()

BATCH = 64  # paths per FileTask in a flood; a single change goes alone, for latency


def lock_path(manifest: bytes) -> bytes:
    """The file whose lock says that a daemon watches this manifest."""
    return manifest + b"-watch.lock"


def reload_path(manifest: bytes) -> bytes:
    """The file where the daemon says how its last reload went (``integrityd reload``)."""
    return manifest + b"-watch.reloaded"


def _record_reload(manifest: bytes, ok: bool, message: str) -> None:
    """Write the outcome of a reload where ``integrityd reload`` waits for it.

    A fresh stamp each time, so that the waiter sees a change even across restarts;
    written beside the manifest (the daemon's own directory) and renamed into place.
    """
    path = reload_path(manifest)
    tmp = path + b".tmp"
    data = json.dumps({"stamp": time.time_ns(), "ok": ok, "message": message}).encode()
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("reload_not_recorded", message=f"cannot write {os.fsdecode(path)}: {e}")


def _take_lock(manifest: bytes) -> int:
    """Refuse to run twice on one manifest: two daemons would report everything twice."""
    path = lock_path(manifest)
    name = os.fsdecode(manifest)
    try:
        # Not through a symlink planted there (we run as root), and private like the
        # manifest beside it.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            msg = f"the lock file {os.fsdecode(path)} is a symlink; remove it"
            raise ManifestLocked(msg) from e
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


@dataclass(slots=True)
class _Requests:
    """What the signal handlers ask of the loop; set between two of its bytecodes."""

    stop: int | None = None  # the signal that asks to stop
    reload: bool = False


@contextlib.contextmanager
def _signals(requests: _Requests, wake: Callable[[], None]) -> Iterator[None]:
    """TERM and INT stop the daemon, HUP reloads it; each wakes the loop."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            requests.reload = True
        else:
            requests.stop = signum
        wake()

    old = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _resolve(cfg: Config, manifest: bytes) -> tuple[Scope, ...]:
    scopes = resolve_scopes("watch", cfg, manifest, [])
    for s in scopes:
        if not os.path.isdir(s.start):
            raise RootError(f"root {os.fsdecode(s.start)} is not a directory; watch needs one")
    return scopes


def run(
    config_path: str | None,
    cfg: Config,
    manifest: bytes,
    json_out: bool,
    *,
    verify_key: str | None = None,
    min_seq: int | None = None,
) -> int:
    """Run the daemon until SIGTERM or SIGINT (exit code 0); raise what cannot go on.

    Every part exists before the daemon does, and each is undone on the way out in the
    reverse order: the observer first (what its threads log while stopping is still
    ours to show), then the workers (they only read: killed, nothing is lost), the
    collector, the lock, the loop.
    """
    requests = _Requests()
    with contextlib.ExitStack() as stack:
        loop = Loop()
        stack.callback(loop.close)
        stack.enter_context(_signals(requests, loop.wake))
        notifier = Notifier()
        stack.callback(notifier.close)
        scopes = _resolve(cfg, manifest)
        stack.callback(os.close, _take_lock(manifest))
        job = Job(
            command="watch",
            manifest=manifest,
            scopes=scopes,
            skip=journal_files(manifest) | {lock_path(manifest), reload_path(manifest)},
            json=json_out,
            progress=False,
            log=cfg.log,
            packages=cfg.packages.database(),
            **_seal(cfg, verify_key, min_seq),
        )
        ctx = multiprocessing.get_context("forkserver")  # cli starts it early, with a preload
        handle = CollectorHandle(ctx, collector.run, job)
        stack.callback(handle.close)
        job = dataclasses.replace(job, trusted=handle.ready.trusted)
        now = time.monotonic()
        heartbeat = Heartbeat(notifier, handle, now)
        pool = WorkerPool(
            ctx,
            count=cfg.worker_count(),
            target=scan.worker_main,
            args=(job, cfg.chunk_size, None, False),
            deliver=handle.send_bytes,
            on_lost=lambda task, reason: handle.send(scan.lost_report(task, reason)),
            guard=handle.guard,
            on_guard=heartbeat.heard,
            loop=loop,
        )
        stack.callback(pool.stop, graceful=False)
        scheduler = ScanScheduler(pool, now)
        changes = Changes(cfg.watch.settle, cfg.watch.max_pending, loop.wake)
        active = frozenset(range(len(scopes)))
        watches = Watches(
            changes,
            scopes,
            active,
            job.skip,
            request_scan=scheduler.request,
            wake=loop.wake,
            backlog_memory=cfg.watch.backlog_memory,
        )
        stack.callback(watches.close)
        pool.start()
        watches.start()
        daemon = Daemon(
            config_path,
            cfg,
            job,
            requests=requests,
            loop=loop,
            pool=pool,
            handle=handle,
            changes=changes,
            watches=watches,
            scheduler=scheduler,
            heartbeat=heartbeat,
            seal_flags=(verify_key, min_seq),
        )
        if cfg.metrics.listen:  # its thread reads daemon.gauges() at each scrape
            server = metrics.Server(cfg.metrics.listen, daemon.gauges)
            stack.callback(server.close)
        code = daemon.run()
    return code


def _seal(cfg: Config, verify_key: str | None, min_seq: int | None) -> dict[str, Any]:
    """The Job's seal fields: the command line's, else the config's (read again on reload)."""
    path = verify_key or cfg.signing.public_key
    key = None
    if path is not None:
        from integrityd import keys  # noqa: PLC0415 - cryptography only when there is a key

        key = keys.load_public(path)
    return {"verify_key": key, "min_seq": cfg.signing.min_seq if min_seq is None else min_seq}


def _summed_rss(pid: int) -> int:
    """RSS in bytes of ``pid`` and every process below it (the workers, the collector)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue  # gone meanwhile, or not ours to see
        parents[int(entry)] = int(fields.get("PPid", "0"))
        rss[int(entry)] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, ()))
    return total


def check_seal(job: Job, everything: bool = False) -> seal.Info:
    """Check the manifest's seal as the daemon's job asks; SignatureError if it fails.

    ``everything``: every entry (a reload); else the statement, the log and the
    directory digests (a full scan, whose workers then check each directory they read).
    """
    with ManifestStore.open(job.manifest, "read") as store, store.guard():
        return store.signature(job.verify_key, job.min_seq, everything=everything)


class Daemon:
    """The main loop of ``integrityd watch``, over parts that all exist before it does."""

    def __init__(
        self,
        config_path: str | None,
        cfg: Config,
        job: Job,
        *,
        requests: _Requests,
        loop: Loop,
        pool: WorkerPool,
        handle: CollectorHandle,
        changes: Changes,
        watches: Watches,
        scheduler: ScanScheduler,
        heartbeat: Heartbeat,
        seal_flags: tuple[str | None, int | None] = (None, None),
    ) -> None:
        self.config_path = config_path
        self.seal_flags = seal_flags  # --verify-key and --min-seq: they outlive a reload
        self.cfg = cfg
        self.job = job
        self.active = frozenset(range(len(job.scopes)))  # removed scopes keep their numbers
        self.workers = cfg.worker_count()
        self.requests = requests
        self.loop = loop
        self.pool = pool
        self.handle = handle
        self.changes = changes
        self.watches = watches
        self.scheduler = scheduler
        self.heartbeat = heartbeat
        self.notifier = heartbeat.notifier
        # Every full scan checks the seal first; the workers check each directory they read.
        self.signature: dict[str, object] | None = None  # as last checked (metrics)
        scheduler.before_scan = self._check_seal

    def run(self) -> int:
        """READY, the catch-up scan, the loop until a stop signal; then the collector's end."""
        self.notifier.send(READY=1, STATUS=self._status())
        log.info(
            "watching",
            message=f"watching {count(len(self.job.scopes), 'root')} "
            f"with {count(self.workers, 'worker')}",
            roots=[os.fsdecode(s.start) for s in self.job.scopes],
            watches=process_watch_count(),
            max_user_watches=watch_limit(),
        )
        self.scheduler.start("startup", self.active, self.job.scopes, self.active, time.monotonic())
        while self.requests.stop is None:
            if self.requests.reload:
                self.requests.reload = False
                self._reload()
            self._feed()
            self._housekeeping()
            self.pool.dispatch()
            self.loop.wait(self._timeout())
        self.watches.quiet = True
        self.notifier.send(STOPPING=1, STATUS="stopping")
        log.info("stopping", signal=self.requests.stop)
        self.pool.stop(graceful=False)  # they only read: nothing to lose, and fast
        self.handle.finish()
        return 0

    def _check_seal(self) -> None:
        self.signature = check_seal(self.job).event()

    def gauges(self) -> metrics.DaemonGauges:
        """The daemon's counters now, for /metrics (read from the server's thread)."""
        stats = self.heartbeat.stats
        return metrics.DaemonGauges(
            roots=len(self.active),
            files_checked=stats.files,
            findings=stats.findings,
            per_root={
                os.fsdecode(self.job.scopes[i].start): (files, nbytes)
                for i, files, nbytes in stats.per_scope
                if 0 <= i < len(self.job.scopes)
            },
            pending_paths=len(self.changes),
            events_lost=self.watches.overflows_total,
            backlog_restarts=self.watches.relieved,
            worker_restarts=self.pool.restarts,
            watches=process_watch_count(),
            watch_limit=watch_limit(),
            rss_bytes=_summed_rss(os.getpid()),
            scans=dict(self.scheduler.started),
            signature=self.signature,
        )

    def _timeout(self) -> float:
        due = self.changes.next_due()
        return self.heartbeat.timeout(TICK_S if due is None else due)

    def _feed(self) -> None:
        """Turn due changes into tasks, a few per worker: the rest wait, merged, in Changes."""
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
                if self.watches.watched(i, path) and self.watches.rewatch_dir(i, path):
                    self.pool.submit(DirTask((path,), i, recursive=True), urgent=True)
            elif covers(root, path):
                if kind == TREE:  # watched before it is scanned: no change falls between
                    self.watches.rewatch_dir(i, path)
                self.pool.submit(DirTask((path,), i, recursive=kind == TREE), urgent=True)
            else:
                files[i].append(root)  # folded from the root's own entry into its parent
        for i, paths in files.items():
            size = max(1, min(BATCH, math.ceil(len(paths) / self.workers)))
            for k in range(0, len(paths), size):
                self.pool.submit(FileTask(tuple(paths[k : k + size]), i), urgent=True)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        self.watches.lost_events(now)
        self.watches.memory(now)
        if over := self.changes.take_rescans():
            log.warning(
                "backlog_full",
                message=f"more than {self.cfg.watch.max_pending:,} paths waited to be hashed; "
                "re-scanning the roots they belong to instead",
                folded=self.changes.folded,
            )
            self.scheduler.request("backlog_full", over)
        every = schedule.interval(self.cfg.watch.rescan_interval, self.watches.degraded)
        done = self.scheduler.tick(now, self.job.scopes, self.active, every)
        if done is not None:
            self.watches.scanned(done.directories)
        if self.heartbeat.due(now):
            self.watches.supervise()
            self.heartbeat.beat(self._status())
        self.heartbeat.watchdog(now)

    def _status(self) -> str:
        reason = self.scheduler.reason
        scanning = f"; scanning ({reason})" if reason else ""
        stats = self.heartbeat.stats
        return (
            f"watching {count(len(self.active), 'root')}; "
            f"{count(stats.files, 'file')} checked, "
            f"{stats.findings:,} findings; {len(self.changes):,} paths pending{scanning}"
        )

    def _reload(self) -> None:
        """SIGHUP: re-read the config; roots come and go without a restart."""
        self.notifier.reloading()
        try:
            cfg = configfile.load(self.config_path) if self.config_path else config.Config()
            scopes = _resolve(cfg, self.job.manifest)
            sealed = _seal(cfg, *self.seal_flags)
        except IntegritydError as e:
            message = f"{e}; still running with the previous config"
            log.error("reload_failed", message=message, error_type=type(e).__name__)
            _record_reload(self.job.manifest, False, message)
            self.notifier.send(READY=1, STATUS=self._status())
            return
        plan = plan_reload(self.job.scopes, self.active, self.cfg, cfg, scopes)
        if plan.restart_needed:
            log.warning(
                "reload_partial", message="these settings need a restart", keys=plan.restart_needed
            )
        job = dataclasses.replace(
            self.job, scopes=plan.scopes, log=cfg.log, packages=cfg.packages.database(), **sealed
        )
        self.signature = check_seal(job, everything=True).event()  # else exit 22
        self.job = job
        logsetup.configure(cfg.log)  # here; the workers and the collector on the new Job
        log.debug("reconfigured", process="main", pid=os.getpid())
        self.cfg = plan.config
        self.changes.settle = cfg.watch.settle
        self.changes.max_pending = cfg.watch.max_pending
        self.watches.backlog_memory = cfg.watch.backlog_memory
        self.pool.reconfigure(self.job)
        self.handle.send(self.job)
        self.active = plan.active
        self.pool.discard(set(plan.removed))
        self.changes.drop(set(plan.removed))
        self.watches.update(plan.scopes, plan.active, plan.removed, plan.added)
        log.info(
            "reloaded",
            added=[os.fsdecode(plan.scopes[i].start) for i in sorted(plan.added)],
            removed=[os.fsdecode(plan.scopes[i].start) for i in sorted(plan.removed)],
        )
        self.scheduler.request("root_added", plan.added)
        _record_reload(self.job.manifest, True, "reloaded")
        self.notifier.send(READY=1, STATUS=self._status())
