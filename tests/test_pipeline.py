"""The worker pool with real forked processes: what main tells the workers about idle ones."""

from __future__ import annotations

import multiprocessing
import pickle
import time
from multiprocessing.connection import Connection

from integrityd.messages import DirTask, Hunger, Task
from integrityd.pipeline import WorkerPool

WORKERS = 4
DEADLINE_S = 10.0


def report_hunger(conn: Connection, hungry: Hunger | None) -> None:
    """A worker that answers each task with the count of idle workers it reads.

    Main sets the count just after it sends the task, so the worker waits (up to a
    deadline) for the count it expects before answering.
    """
    while (task := conn.recv()) is not None:
        deadline = time.monotonic() + DEADLINE_S
        seen = hungry.value if hungry is not None else -1
        while seen != WORKERS - 1 and time.monotonic() < deadline:
            time.sleep(0.001)
            seen = hungry.value if hungry is not None else -1
        conn.send(([], 0, pickle.dumps((task, seen))))


def test_workers_read_how_many_of_them_wait() -> None:
    """One task among four forked workers: the one working reads that three wait."""
    delivered: list[tuple[Task, int]] = []
    lost: list[Task] = []
    task = DirTask((b"/nowhere",), 0)
    pool = WorkerPool(
        multiprocessing.get_context("fork"),
        count=WORKERS,
        target=report_hunger,
        args=(),
        deliver=lambda raw: delivered.append(pickle.loads(raw)),
        on_lost=lambda t, _reason: lost.append(t),
    )
    pool.submit(task)
    with pool:
        pool.run()
    assert delivered == [(task, WORKERS - 1)]
    assert lost == []
