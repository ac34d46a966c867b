"""Process supervision: long-lived hash workers, their tasks, and the collector process.

Each worker has a pipe of its own to the main process instead of a shared queue: a
worker killed while it holds a shared queue's lock (SIGKILL, the OOM killer) would leave
that queue unusable for every other worker. Main keeps a stack of tasks (depth first, so
it stays small) and, served before it, a queue of urgent ones (the daemon's live
changes), sends at most ``INFLIGHT`` to each worker, pushes the tasks each one hands
back (subdirectories it left, large files) onto the stack, and forwards each report to
the collector as bytes, without unpickling it. When a worker dies, the tasks it held go
to its replacement once; a task that kills a worker twice is handed to ``on_lost``, so
its files are reported as unverifiable rather than silently skipped.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import util
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any, Self

from integrityd import errors, logsetup
from integrityd.errors import CollectorDied, IntegritydError, WorkerDied
from integrityd.eventloop import Loop
from integrityd.messages import Failed, Finish, LiveStats, Ready, Summary, Task

log = logsetup.get_logger()

Context = ForkContext | ForkServerContext

INFLIGHT = 4  # tasks queued per worker, so that none waits for the main process
STOP_TIMEOUT_S = 5.0


_Item = tuple[Task, int, bool]  # (task, earlier tries, urgent)


class SharedCount:
    """An int that forked children share with their parent: an anonymous shared mapping.

    multiprocessing's RawValue does the same, but brings ctypes into main and keeps its
    arena in a temporary file in /dev/shm.
    """

    def __init__(self) -> None:
        self._cell = memoryview(mmap.mmap(-1, 8)).cast("q")

    @property
    def value(self) -> int:
        """The count (a read or a write of one aligned word: no lock needed)."""
        return int(self._cell[0])

    @value.setter
    def value(self, n: int) -> None:
        self._cell[0] = n


@dataclass
class _Worker:
    proc: BaseProcess
    conn: Connection
    inflight: list[_Item] = field(default_factory=list)


class WorkerPool:
    """N worker processes running ``target(conn, hungry, *args)``; reports go to ``deliver``.

    ``hungry`` (a Hunger) counts the workers that wait while no task does: main sets it
    after each dispatch, and a worker walking a large subtree hands back part of it when
    it reads more than 0. Only workers forked from main share it; the daemon's, forked
    from the process server, get None and keep to their (short) task budget.

    The pool waits on its workers in ``loop``: the daemon passes its own, in which it
    waits for other things too; without one the pool makes one for itself.
    """

    def __init__(
        self,
        ctx: Context,
        *,
        count: int,
        target: Callable[..., None],
        args: tuple[Any, ...],
        deliver: Callable[[bytes], None],
        on_lost: Callable[[Task, str], None],
        guard: Sequence[Any] = (),
        on_guard: Callable[[], None] = lambda: None,
        limits: dict[int, int] | None = None,
        loop: Loop | None = None,
    ) -> None:
        self._ctx = ctx
        self._count = count
        self._target = target
        self._args = args
        self._deliver = deliver
        self._on_lost = on_lost
        self._workers: list[_Worker] = []
        self._pending: list[_Item] = []  # a stack: the walk stays depth first
        self._urgent: list[_Item] = []  # before any of _pending, oldest first
        # Per scope, the most tasks in flight at once (a root on a spinning disk: 1).
        self._limits = limits or {}
        self._running: Counter[int] = Counter()
        self._waiting: Counter[int] = Counter()  # pending tasks per scope
        # One epoll set for the whole run: multiprocessing.connection.wait() would build
        # and fill a new one on every call, which at 16 workers limits the dispatch rate.
        self._own_loop = loop is None
        self._loop = Loop() if loop is None else loop
        self._guard = tuple(guard)
        for g in self._guard:
            self._loop.add_reader(g, on_guard)
        self._stopped = False
        self._hungry = SharedCount() if isinstance(ctx, ForkContext) else None
        self._restarts_left = 2 * count + 4
        self.restarts = 0
        self.walked = 0  # directories listed by recursive DirTasks (the daemon's watch count)

    def __enter__(self) -> Self:
        return self.start()

    def start(self) -> Self:
        """Start the workers; ``stop`` ends them (the context manager does both).

        Tasks submitted before go to the first worker as soon as it exists: forking the
        others took a millisecond or more each (25 ms for 16), and the first task hands
        back the subdirectories that keep them busy.
        """
        for _ in range(self._count):
            self._workers.append(self._spawn())
            if len(self._workers) == 1:
                self._dispatch(iter(()))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.stop(graceful=exc_type is None)

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        parent_only(parent)
        args = (child, self._hungry, *self._args)
        proc = self._ctx.Process(target=self._target, args=args, name="hasher")
        try:
            proc.start()
        except (EOFError, OSError) as e:
            # The daemon's process server (forkserver) died: killed, or by the OOM
            # killer. multiprocessing raised EOFError('unexpected EOF') from the middle
            # of its protocol, and the daemon ended in an "internal error". It cannot
            # fork a worker any more: end with a clear cause, and systemd restarts us
            # (Restart=on-failure); the restart's catch-up scan misses nothing.
            parent.close()
            child.close()
            msg = f"cannot start a hash worker: the process that forks them is gone ({e!r})"
            raise WorkerDied(msg) from e
        child.close()  # so that the worker's death reads as EOF here
        log.debug("worker_started", pid=proc.pid)
        worker = _Worker(proc, parent)
        self._loop.add_reader(parent, lambda: self._readable(worker))
        self._loop.add_reader(proc.sentinel, lambda: self._ended(worker))
        return worker

    def submit(self, task: Task, *, urgent: bool = False) -> None:
        """Add a task; ``run`` carries it out.

        An urgent task (the daemon's live changes) goes to the next free worker before
        any other: a scan keeps hundreds of tasks pending, and a change waiting behind
        them was reported seconds late. What an urgent task hands back, and an urgent
        task retried after its worker died, stay urgent.
        """
        self._push(task, 0, urgent)

    def _push(self, task: Task, tries: int, urgent: bool = False) -> None:
        (self._urgent if urgent else self._pending).append((task, tries, urgent))
        self._waiting[task.scope] += 1

    @property
    def busy(self) -> bool:
        """True while any task is pending or in flight."""
        return bool(self._pending or self._urgent) or any(w.inflight for w in self._workers)

    @property
    def urgent_backlog(self) -> int:
        """Urgent tasks waiting for a worker."""
        return len(self._urgent)

    def run(self, source: Iterator[Task] | None = None) -> None:
        """Carry out every task (those submitted, then ``source``'s) and those they spawn.

        ``source`` is drawn from only when nothing else is pending, so that a long list of
        tasks never sits in memory.
        """
        source = source if source is not None else iter(())
        while True:
            if not self._pending:
                task = next(source, None)
                if task is not None:
                    self._push(task, 0)
            if not self.busy:
                return
            self._dispatch(source)
            self._loop.wait(None)

    def dispatch(self) -> None:
        """Hand pending tasks to workers with room for them (the daemon's loop calls this)."""
        self._dispatch(iter(()))

    def reconfigure(self, job: Any) -> None:  # noqa: ANN401 - the first of the workers' args
        """Give every worker, and later replacements, a new job; tasks sent before keep the old."""
        self._args = (job, *self._args[1:])
        for w in self._workers:
            with contextlib.suppress(OSError):  # a dead worker's replacement gets the new args
                w.conn.send(job)

    def discard(self, scopes: set[int]) -> None:
        """Drop the pending tasks of these scopes (roots no longer watched)."""
        self._pending = [item for item in self._pending if item[0].scope not in scopes]
        self._urgent = [item for item in self._urgent if item[0].scope not in scopes]
        self._waiting = Counter(item[0].scope for item in self._pending + self._urgent)

    def _dispatch(self, source: Iterator[Task]) -> None:
        while self._pending or self._urgent:
            worker = min(self._workers, key=lambda w: len(w.inflight))
            if len(worker.inflight) >= INFLIGHT:
                break
            item = self._take()
            if item is None:
                break  # every pending task waits for its scope's limit
            worker.inflight.append(item)
            self._running[item[0].scope] += 1
            try:
                worker.conn.send(item[0])
            except OSError:
                self._replace(worker)
            if not self._pending and (task := next(source, None)) is not None:
                self._push(task, 0)
        if self._hungry is not None:
            waiting = self._pending or self._urgent
            self._hungry.value = 0 if waiting else sum(not w.inflight for w in self._workers)

    def _take(self) -> _Item | None:
        """The oldest urgent, else the newest pending task whose scope is under its limit."""
        open_scopes = {
            scope
            for scope, n in self._waiting.items()
            if n and self._running[scope] < self._limits.get(scope, 1 << 30)
        }
        if not open_scopes:
            return None  # without scanning a long list of tasks that must all wait
        for i, (task, _, _) in enumerate(self._urgent):
            if task.scope in open_scopes:
                return self._pop(self._urgent, i)
        for i in range(len(self._pending) - 1, -1, -1):
            if self._pending[i][0].scope in open_scopes:
                return self._pop(self._pending, i)
        return None

    def _pop(self, tasks: list[_Item], i: int) -> _Item:
        item = tasks.pop(i)
        self._waiting[item[0].scope] -= 1
        return item

    def _readable(self, worker: _Worker) -> None:
        if worker not in self._workers:
            return  # replaced earlier in the same round of the loop
        try:
            self._receive(worker)
        except (EOFError, OSError):
            self._replace(worker)

    def _ended(self, worker: _Worker) -> None:
        if worker in self._workers:
            self._replace(worker)

    def _receive(self, worker: _Worker) -> None:
        msg = worker.conn.recv()
        if isinstance(msg, Failed):  # the worker cannot go on: nor can the run
            raise _rebuild(msg)
        if len(msg) == 4:  # a part of the result of a task that goes on (a huge directory)
            spawned, walked, report, _ = msg
            urgent = worker.inflight[0][2]
            for task in spawned:
                self._push(task, 0, urgent)
            self._deliver(report)
            return
        spawned, walked, report = msg
        done, _, urgent = worker.inflight.pop(0)
        self._running[done.scope] -= 1
        self.walked += walked
        for task in spawned:
            self._push(task, 0, urgent)  # the rest of a live change is live work too
        self._deliver(report)

    def _replace(self, worker: _Worker) -> None:
        # Reports the worker finished before it died are still in the pipe.
        try:
            while worker.inflight and worker.conn.poll():
                self._receive(worker)
        except (EOFError, OSError):
            pass
        worker.proc.join(STOP_TIMEOUT_S)
        self._forget(worker)
        self._workers.remove(worker)
        if outlived(worker.proc.pid):
            msg = (
                "the process server that forks the hash workers died (killed, or by the "
                "OOM killer), and with it every worker's exit status: stopping, to be "
                "restarted whole"
            )
            raise WorkerDied(msg)
        code = worker.proc.exitcode
        log.warning("worker_died", pid=worker.proc.pid, exitcode=code, tasks=len(worker.inflight))
        self.restarts += 1
        if self._restarts_left == 0:
            msg = f"hash workers keep dying (last: pid {worker.proc.pid}, exit code {code})"
            raise WorkerDied(msg)
        self._restarts_left -= 1
        self._workers.append(self._spawn())
        for task, tries, urgent in worker.inflight:
            self._running[task.scope] -= 1
            if tries:
                self._on_lost(task, f"the worker hashing it died twice (exit code {code})")
            else:
                self._push(task, tries + 1, urgent)

    def _forget(self, worker: _Worker) -> None:
        self._loop.remove_reader(worker.conn)
        self._loop.remove_reader(worker.proc.sentinel)
        worker.conn.close()

    def stop(self, graceful: bool) -> None:
        """Stop every worker: by sentinel after a normal run, at once after an error.

        Idempotent: the daemon stops its pool before the collector finishes, and again
        on its way out whatever happened.
        """
        if self._stopped:
            return
        self._stopped = True
        for w in self._workers:
            if graceful:
                with contextlib.suppress(OSError):  # a dead worker is reaped below all the same
                    w.conn.send(None)
            else:
                w.proc.kill()
        for w in self._workers:
            w.proc.join(STOP_TIMEOUT_S)
            if w.proc.is_alive() or outlived(w.proc.pid):
                log.warning("worker_killed", pid=w.proc.pid)
                w.proc.kill()
                w.proc.join()
            self._forget(w)
            w.proc.close()
        self._workers.clear()
        if self._own_loop:
            self._loop.close()
        else:
            for g in self._guard:
                self._loop.remove_reader(g)


class CollectorHandle:
    """The main process's side of the collector: a data pipe in, a control pipe back."""

    def __init__(self, ctx: Context, target: Callable[..., None], job: object) -> None:
        self._data, data_child = ctx.Pipe(duplex=False)[::-1]
        ctl_parent, ctl_child = ctx.Pipe(duplex=False)
        parent_only(self._data)
        self._ctl = ctl_parent
        self._proc = ctx.Process(target=target, args=(data_child, ctl_child, job), name="collector")
        self._proc.start()
        data_child.close()
        ctl_child.close()
        self.guard: tuple[Any, ...] = (self._ctl, self._proc.sentinel)
        self.ready: Ready = self._expect(Ready)

    def _expect(self, kind: type) -> Any:  # noqa: ANN401 - one of the collector's replies
        try:
            msg = self._ctl.recv()
            while isinstance(msg, LiveStats) and kind is not LiveStats:
                msg = self._ctl.recv()  # a late answer to a Ping, before the Summary
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

    def stats(self) -> LiveStats:
        """watch: read the collector's answer to a Ping; anything else is an error."""
        if not self._ctl.poll(0):  # woken by its sentinel, with nothing to read: it ended
            self._proc.join(STOP_TIMEOUT_S)
            why = (
                "the process server that forked it died, and with it its exit status"
                if outlived(self._proc.pid)
                else f"exit code {self._proc.exitcode}"
            )
            raise CollectorDied(f"the collector process ended unexpectedly ({why})")
        stats: LiveStats = self._expect(LiveStats)
        return stats

    def send_bytes(self, raw: bytes) -> None:
        """Forward a pickled message (a worker's report, as it came)."""
        try:
            self._data.send_bytes(raw)
        except OSError:
            self.failed()

    def send(self, msg: object) -> None:
        """Send a message of main's own (a lost task's report, NewCycle, Finish)."""
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
        if self._proc.is_alive() or outlived(self._proc.pid):
            self._proc.kill()
            self._proc.join()
        self._ctl.close()


def outlived(pid: int | None) -> bool:
    """Whether a child whose end was reported (and joined) is in fact still running.

    A child of the daemon's process server (forkserver) reports its end through a pipe
    from that server: when the server itself dies, every such pipe reads as an end
    (exit code 255) while the children live on, orphaned. A child that really ended has
    been reaped by then (by us, or by the server), and its PID is gone.
    """
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parent_only(conn: Connection) -> None:
    """Close ``conn`` in every process forked from here on.

    With the fork start method a child inherits every descriptor main holds. A worker
    holding a copy of another's pipe end (or of the collector's input) would keep it
    open after main dies, and the EOF that tells a worker or the collector to give up
    would never come.
    """
    util.register_after_fork(conn, Connection.close)


def _rebuild(msg: Failed) -> IntegritydError:
    """A child's error as the same class here, so that it keeps its exit code."""
    cls = getattr(errors, msg.error_type, None)
    if isinstance(cls, type) and issubclass(cls, IntegritydError) and cls is not errors.Interrupted:
        return cls(msg.message)
    return CollectorDied(msg.message)
