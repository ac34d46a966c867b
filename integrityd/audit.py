"""Composition root for the manual audit (init, check, accept).

Data flow, and the order of shutdown::

    walk (this process) ──> WorkerPool: pipe per worker ──> hasher xN
                                  │  results, forwarded as raw bytes
                                  v
                            collector process ──> manifest (SQLite) + report on stdout

The collector starts first and takes the manifest (and, for writers, its lock) before any
file is read, so a locked or damaged manifest fails in a second, not after an hour of
hashing. On success: drain the workers, stop them with a sentinel each, then tell the
collector to finish; it commits and writes the report. On any error or signal: kill the
workers and close the collector's input, which makes it roll back and exit.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

from integrityd import collector
from integrityd.config import Config, RootConfig
from integrityd.errors import ManifestError, RootError, UsageError
from integrityd.events import Command, DirUnreadable, Job, Scope, Summary, WalkProgress, Work
from integrityd.manifest import ManifestStore
from integrityd.pipeline import CollectorHandle, WorkerPool
from integrityd.walk import walk

BATCH_FILES = 256
BATCH_BYTES = 8 << 20  # file data per batch, so a few large files spread over the workers
BATCH_PATH_BYTES = 64 << 10  # keeps two batches in flight well inside a socket buffer
PROGRESS_EVERY = 32  # batches between progress notes to the collector


def _covers(root: bytes, path: bytes) -> bool:
    return path == root or path.startswith(root.rstrip(b"/") + b"/")


def _stored_roots(manifest: bytes, command: Command) -> list[RootConfig]:
    try:
        with ManifestStore.open(manifest, "read") as store, store.guard():
            return store.roots()
    except ManifestError:
        if command == "init":
            return []  # a new manifest, or one init will report on properly
        raise


def resolve_scopes(
    command: Command, cfg: Config, manifest: bytes, paths: list[bytes]
) -> tuple[Scope, ...]:
    """Decide what to scan, and with which root's options, from the CLI, config and manifest."""
    stored = _stored_roots(manifest, command)
    known = [*cfg.roots, *sorted(stored, key=lambda r: len(r.path), reverse=True)]
    name = os.fsdecode(manifest)
    scopes: list[Scope] = []
    if paths:
        for p in paths:
            root = next((r for r in known if _covers(r.path, p)), None)
            if root is None:
                if command != "init":
                    msg = f"{os.fsdecode(p)} has no baseline in {name}; run 'integrityd init' first"
                    raise ManifestError(msg)
                root = RootConfig(path=p)
            scopes.append(Scope(root, p))
    elif cfg.roots:
        for r in cfg.roots:
            if command != "init" and not any(_covers(s.path, r.path) for s in stored):
                msg = f"root {os.fsdecode(r.path)} from the config has no baseline in {name}"
                raise ManifestError(f"{msg}; run 'integrityd init' first")
            scopes.append(Scope(r, r.path))
    elif command == "init":
        raise UsageError("init needs PATHs to baseline, or a config (-c) that lists roots")
    else:
        if not stored:
            raise ManifestError(
                f"manifest {name} holds no baseline yet; run 'integrityd init' first"
            )
        scopes = [Scope(r, r.path) for r in stored]
    # A scope inside another one would be scanned twice.
    starts = [s.start for s in scopes]
    unique = {
        s.start: s for s in scopes if not any(o != s.start and _covers(o, s.start) for o in starts)
    }
    for s in unique.values():
        if not os.path.lexists(s.start):
            raise RootError(f"{os.fsdecode(s.start)} does not exist (is the filesystem mounted?)")
    return tuple(unique.values())


def run(job: Job, cfg: Config) -> Summary:
    """Walk, hash and compare every scope of the job; return the collector's summary."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["integrityd.collector", "integrityd.pipeline"])
    handle = CollectorHandle(ctx, collector.run, job)
    try:
        with WorkerPool(
            ctx,
            count=cfg.worker_count(),
            chunk_size=cfg.chunk_size,
            log_cfg=job.log,
            deliver=handle.send_bytes,
            guard=handle.guard,
            on_guard=handle.failed,
        ) as pool:
            _feed(job, pool, handle)
            pool.drain()
        _ignore_signals()  # past this point the collector commits: let it finish
        return handle.finish()
    finally:
        handle.close()


def _feed(job: Job, pool: WorkerPool, handle: CollectorHandle) -> None:
    batch: list[Work] = []
    data = path_bytes = files = total = sent = 0
    for scope in job.scopes:
        for item in walk(scope, job.skip):
            if isinstance(item, DirUnreadable):
                handle.send(item)
                continue
            batch.append(item)
            data += item[2]
            path_bytes += len(item[0])
            if len(batch) >= BATCH_FILES or data >= BATCH_BYTES or path_bytes >= BATCH_PATH_BYTES:
                files += len(batch)
                total += data
                pool.submit(batch)
                batch, data, path_bytes = [], 0, 0
                sent += 1
                if job.progress and sent % PROGRESS_EVERY == 0:
                    handle.send(WalkProgress(files, total, done=False))
    if batch:
        pool.submit(batch)
    if job.progress:
        handle.send(WalkProgress(files + len(batch), total + data, done=True))


def _ignore_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
