"""Process supervision: long-lived hash workers and the collector process.

Each worker has a pipe of its own to the main process instead of a shared queue: a
worker killed while it holds a shared queue's lock (SIGKILL, the OOM killer) would leave
that queue unusable for every other worker. Main sends batches of work, at most
``INFLIGHT`` per worker, and forwards each result batch to the collector as raw bytes,
without unpickling it. When a worker dies, the batches it held are sent to its
replacement once; a batch that kills a worker twice is reported as unverifiable rather
than silently skipped.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any, Self

import structlog

from integrityd import errors
from integrityd.config import LogConfig
from integrityd.errors import CollectorDied, IntegritydError, WorkerDied
from integrityd.events import Failed, Finish, Ready, Summary, Work
from integrityd.hashing import Hasher, failed

log = structlog.get_logger()

INFLIGHT = 2
STOP_TIMEOUT_S = 5.0


def _worker_main(conn: Connection, chunk_size: int, log_cfg: LogConfig) -> None:
    from integrityd import logsetup  # noqa: PLC0415 - children configure their own logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process owns shutdown
    logsetup.configure(log_cfg)
    hasher = Hasher(chunk_size)
    state = hasher.state
    try:
        while (batch := conn.recv()) is not None:
            conn.send([state(path, hint) for path, hint, _ in batch])
    except (EOFError, BrokenPipeError):
        pass  # the main process is gone; nobody wants our results


@dataclass
class _Batch:
    items: list[Work]
    tries: int = 0


@dataclass
class _Worker:
    proc: BaseProcess
    conn: Connection
    inflight: deque[_Batch] = field(default_factory=deque)


class WorkerPool:
    """N hash workers; results go to ``deliver`` as pickled ``list[FileState]`` bytes."""

    def __init__(
        self,
        ctx: ForkServerContext,
        *,
        count: int,
        chunk_size: int,
        log_cfg: LogConfig,
        deliver: Callable[[bytes], None],
        guard: Sequence[Any] = (),
        on_guard: Callable[[], None] = lambda: None,
    ) -> None:
        self._ctx = ctx
        self._count = count
        self._args = (chunk_size, log_cfg)
        self._deliver = deliver
        self._guard = list(guard)
        self._on_guard = on_guard
        self._workers: list[_Worker] = []
        self._retry: deque[_Batch] = deque()
        self._restarts_left = 2 * count + 4
        self.restarts = 0

    def __enter__(self) -> Self:
        for _ in range(self._count):
            self._workers.append(self._spawn())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.stop(graceful=exc_type is None)

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, *self._args), name="hasher")
        proc.start()
        child.close()  # so that the worker's death reads as EOF here
        log.debug("worker_started", pid=proc.pid)
        return _Worker(proc, parent)

    def submit(self, items: list[Work]) -> None:
        """Hand a batch to the least busy worker, waiting while all are full."""
        self._retry.append(_Batch(items))
        self._dispatch()

    def _dispatch(self) -> None:
        while self._retry:
            worker = min(self._workers, key=lambda w: len(w.inflight))
            if len(worker.inflight) >= INFLIGHT:
                self._poll()
                continue
            batch = self._retry.popleft()
            worker.inflight.append(batch)
            try:
                worker.conn.send(batch.items)
            except (BrokenPipeError, ConnectionResetError):
                self._replace(worker)

    def drain(self) -> None:
        """Wait until every submitted batch has been delivered."""
        while self._retry or any(w.inflight for w in self._workers):
            self._dispatch()
            if any(w.inflight for w in self._workers):
                self._poll()

    def _poll(self) -> None:
        by_key: dict[Any, _Worker] = {}
        for w in self._workers:
            by_key[w.conn] = w
            by_key[w.proc.sentinel] = w
        for ready in wait([*by_key, *self._guard]):
            if ready in self._guard:
                self._on_guard()
                continue
            worker = by_key[ready]
            if worker not in self._workers:
                continue  # already replaced during this round
            if ready is worker.conn:
                try:
                    self._receive(worker)
                except (EOFError, OSError):
                    self._replace(worker)
            else:
                self._replace(worker)

    def _receive(self, worker: _Worker) -> None:
        self._deliver(worker.conn.recv_bytes())
        worker.inflight.popleft()

    def _replace(self, worker: _Worker) -> None:
        # Results the worker finished before it died are still in the pipe.
        try:
            while worker.inflight and worker.conn.poll():
                self._receive(worker)
        except (EOFError, OSError):
            pass
        worker.proc.join(STOP_TIMEOUT_S)
        worker.conn.close()
        self._workers.remove(worker)
        code = worker.proc.exitcode
        log.warning("worker_died", pid=worker.proc.pid, exitcode=code, batches=len(worker.inflight))
        self.restarts += 1
        if self._restarts_left == 0:
            msg = f"hash workers keep dying (last: pid {worker.proc.pid}, exit code {code})"
            raise WorkerDied(msg)
        self._restarts_left -= 1
        self._workers.append(self._spawn())
        for batch in reversed(worker.inflight):
            batch.tries += 1
            if batch.tries > 1:
                reason = f"the worker hashing it died twice (exit code {code})"
                lost = [failed(path, "worker_died", reason) for path, _, _ in batch.items]
                self._deliver(pickle.dumps(lost))
            else:
                self._retry.appendleft(batch)

    def stop(self, graceful: bool) -> None:
        """Stop every worker: by sentinel after a normal run, at once after an error."""
        for w in self._workers:
            if graceful:
                with contextlib.suppress(OSError):  # a dead worker is reaped below all the same
                    w.conn.send(None)
            else:
                w.proc.kill()
        for w in self._workers:
            w.proc.join(STOP_TIMEOUT_S)
            if w.proc.is_alive():
                log.warning("worker_killed", pid=w.proc.pid)
                w.proc.kill()
                w.proc.join()
            w.conn.close()
            w.proc.close()
        self._workers.clear()


class CollectorHandle:
    """The main process's side of the collector: a data pipe in, a control pipe back."""

    def __init__(self, ctx: ForkServerContext, target: Callable[..., None], job: object) -> None:
        self._data, data_child = ctx.Pipe(duplex=False)[::-1]
        ctl_parent, ctl_child = ctx.Pipe(duplex=False)
        self._ctl = ctl_parent
        self._proc = ctx.Process(target=target, args=(data_child, ctl_child, job), name="collector")
        self._proc.start()
        data_child.close()
        ctl_child.close()
        self.guard: tuple[Any, ...] = (self._ctl, self._proc.sentinel)
        self._expect(Ready)

    def _expect(self, kind: type) -> Any:  # noqa: ANN401 - one of the collector's replies
        try:
            msg = self._ctl.recv()
        except (EOFError, OSError):
            self._proc.join(STOP_TIMEOUT_S)
            msg = f"the collector process ended unexpectedly (exit code {self._proc.exitcode})"
            raise CollectorDied(msg) from None
        if isinstance(msg, Failed):
            raise _rebuild(msg)
        if not isinstance(msg, kind):
            raise CollectorDied(
                f"the collector sent {type(msg).__name__}, expected {kind.__name__}"
            )
        return msg

    def failed(self) -> None:
        """Called when the collector spoke or died mid-run: that is always an error."""
        self._expect(Ready)  # raises what the collector reported, or CollectorDied

    def send_bytes(self, raw: bytes) -> None:
        """Forward a pickled result batch."""
        try:
            self._data.send_bytes(raw)
        except OSError:
            self.failed()

    def send(self, msg: object) -> None:
        """Send a control message (walk progress, an unreadable directory, ...)."""
        self.send_bytes(pickle.dumps(msg))

    def finish(self) -> Summary:
        """Tell the collector that all results are in; wait for its summary."""
        self.send(Finish())
        summary: Summary = self._expect(Summary)
        self._proc.join(STOP_TIMEOUT_S)
        return summary

    def close(self) -> None:
        """Make sure the collector is gone; closing its input makes it roll back and exit."""
        self._data.close()
        self._proc.join(STOP_TIMEOUT_S)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._ctl.close()


def _rebuild(msg: Failed) -> IntegritydError:
    """The collector's error as the same class here, so it keeps its exit code."""
    cls = getattr(errors, msg.error_type, None)
    if isinstance(cls, type) and issubclass(cls, IntegritydError) and cls is not errors.Interrupted:
        return cls(msg.message)
    return CollectorDied(msg.message)
