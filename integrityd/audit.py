"""Composition root for the manual audit (init, check, accept).

Data flow, and the order of shutdown::

    main: stack of tasks ──(pipe per worker)──> worker xN: list dir, hash, compare
         ^                                          │   (read-only baseline reader)
         └──── spawned tasks (subdirs, big files) ──┤
                                                    v  reports: differences only,
                         collector process <────────┘  forwarded as raw bytes
                            └──> manifest (the only writer) + report on stdout

The collector starts first and takes the manifest (and, for writers, its lock) before any
file is read, so a locked or damaged manifest fails in a second, not after an hour of
hashing. Walking is spread over the workers: each directory is a task, and the
directories it holds become new tasks. On success: when no task is left, stop the
workers with a sentinel each, then tell the collector to finish; it commits and writes
the report. On any error or signal: kill the workers and close the collector's input,
which makes it roll back and exit.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import stat
import threading

from integrityd import collector, scan
from integrityd.config import Config, RootConfig
from integrityd.errors import ManifestError, RootError, UsageError
from integrityd.events import (
    Command,
    DirTask,
    FileState,
    FileTask,
    Finding,
    Job,
    Report,
    Scope,
    Summary,
    Task,
)
from integrityd.hashing import failed
from integrityd.manifest import ManifestStore
from integrityd.pipeline import CollectorHandle, WorkerPool


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
    """Scan, hash and compare every scope of the job; return the collector's summary."""
    ctx = multiprocessing.get_context("forkserver")  # cli starts it early, with a preload
    handle = CollectorHandle(ctx, collector.run, job)

    def lost(task: Task, reason: str) -> None:
        if isinstance(task, DirTask):
            report = Report(0, 0, [], [], [], [(task.path, "worker_died", reason)])
        else:
            states = [failed(p, "worker_died", reason) for p in task.paths]
            report = Report(0, 0, [_unreadable(s) for s in states], [], [], [])
        handle.send_bytes(pickle.dumps(report))

    try:
        with WorkerPool(
            ctx,
            count=cfg.worker_count(),
            target=scan.worker_main,
            args=(job, cfg.chunk_size),
            deliver=handle.send_bytes,
            on_lost=lost,
            guard=handle.guard,
            on_guard=handle.failed,
        ) as pool:
            for i, scope in enumerate(job.scopes):
                pool.submit(FileTask((scope.start,), i))  # the start itself: a file or a dir
                if stat.S_ISDIR(os.lstat(scope.start).st_mode):
                    pool.submit(DirTask(scope.start, i))
            pool.run()
        _ignore_signals()  # past this point the collector commits: let it finish
        return handle.finish()
    finally:
        handle.close()


def _unreadable(state: FileState) -> Finding:
    return Finding("unreadable", state.path, None, state)


def _ignore_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
