"""Composition root for the manual audit (init, check, accept).

Data flow, and the order of shutdown::

    main: stack of tasks ──(pipe per worker)──> worker xN: list dirs, hash, compare
         ^                                          │   (read-only baseline reader)
         └── tasks handed back (dirs, big files) ───┤
                                                    v  reports: differences only,
                         collector process <────────┘  forwarded as raw bytes
                            └──> manifest (the only writer) + report on stdout

The collector starts first and takes the manifest (and, for writers, its lock) before
any file is read, so a locked or damaged manifest fails in a second, not after an hour
of hashing. Walking is spread over the workers: a task walks a subtree for about 10 ms,
then hands back the directories it did not get to as new tasks. On success: when no task
is left, stop the workers with a sentinel each, then tell the collector to finish; it
commits and writes the report. On any error or signal: kill the workers and close the
collector's input, which makes it roll back and exit.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import stat
import time
from collections.abc import Iterator

from integrityd import collector, scan
from integrityd.config import Budget, Config
from integrityd.hashing import Pace
from integrityd.manifest import ManifestStore
from integrityd.messages import (
    DirTask,
    FileTask,
    Job,
    NewCycle,
    Summary,
    Task,
)
from integrityd.pipeline import CollectorHandle, WorkerPool
from integrityd.signals import ignore_stop_signals

VERIFY_BATCH = 256  # files per verify task


def run(job: Job, cfg: Config, budget: Budget | None = None) -> Summary:
    """Scan, hash and compare every scope of the job; return the collector's summary.

    ``verify`` instead re-hashes baselined files, least recently verified first, within
    ``budget``.
    """
    # main has one thread and has already imported what the children need: forking it
    # costs about 1 ms, where a process server boots a second interpreter (0.13 s of a
    # one-file check). The daemon, whose observer threads are running when it replaces a
    # worker, uses the process server instead.
    ctx = multiprocessing.get_context("fork")
    handle = CollectorHandle(ctx, collector.run, job)
    job = dataclasses.replace(job, trusted=handle.ready.trusted)

    def lost(task: Task, reason: str) -> None:
        handle.send(scan.lost_report(task, reason))

    workers = cfg.worker_count()
    pace = Pace(job.max_rate / workers, time.monotonic()) if job.max_rate else None
    try:
        pool = WorkerPool(
            ctx,
            count=workers,
            target=scan.worker_main,
            args=(job, cfg.chunk_size, pace, job.idle),
            limits={i: s.root.workers for i, s in enumerate(job.scopes) if s.root.workers},
            deliver=handle.send_bytes,
            on_lost=lost,
            guard=handle.guard,
            on_guard=handle.failed,
        )
        if job.policy.walks:  # submitted first, so that the first worker starts on them
            for i, scope in enumerate(job.scopes):
                pool.submit(FileTask((scope.start,), i))  # the start itself: file or dir
                if stat.S_ISDIR(os.lstat(scope.start).st_mode):
                    pool.submit(DirTask((scope.start,), i))
        with pool:
            pool.run(
                _verify_tasks(job, budget or Budget(), handle) if job.policy.verifies else None
            )
        ignore_stop_signals()  # past this point the collector commits: let it finish
        return handle.finish()
    finally:
        handle.close()


def _verify_tasks(job: Job, budget: Budget, handle: CollectorHandle) -> Iterator[Task]:
    """Batches of baselined files, least recently verified first, until the budget is spent.

    A fraction budget works in cycles per root: a run takes only files not yet verified in
    the current cycle, so k runs of 1/k verify every file exactly once; when none is left,
    a new cycle begins.
    """
    deadline = time.monotonic() + budget.seconds if budget.seconds is not None else None
    spent = 0
    with ManifestStore.open(job.manifest, "read") as store, store.guard():
        for i, scope in enumerate(job.scopes):
            allowed = budget.files_for(store.verification_stats(scope.start)[0])
            before = None
            if allowed is not None:
                before = store.cycle_start(scope.root.path)
                if store.count_due(scope.start, before) == 0:
                    before = time.time_ns()  # older than anything this run will record
                    handle.send(NewCycle(scope.root.path, before))
            batch: list[bytes] = []
            size = 0
            for count, (path, nbytes) in enumerate(store.by_verification_age(scope.start, before)):
                over_time = deadline is not None and time.monotonic() > deadline
                over_size = budget.bytes is not None and spent >= budget.bytes
                if over_time or over_size or (allowed is not None and count >= allowed):
                    break
                batch.append(path)
                size += nbytes
                spent += nbytes
                if len(batch) >= VERIFY_BATCH or size >= scan.LARGE_FILE:
                    yield FileTask(tuple(batch), i)
                    batch, size = [], 0
            if batch:
                yield FileTask(tuple(batch), i)
