"""Reads in flight while a worker hashes: threads that ask the kernel to read ahead.

A cold tree is read one file at a time by each worker: the disk sees as many reads as
there are workers, and SSDs, NVMe, RAID and network storage deliver their speed only
with many queued. So while a worker hashes a directory's files, ``depth`` threads open
the files it will read next and ask the kernel to read their first chunk
(``posix_fadvise(WILLNEED)``), then close them; the worker's own read then finds the
data in the page cache. The threads never read data themselves, never open anything
but the directory's regular files (``O_NOFOLLOW | O_NONBLOCK``: a FIFO swapped in is
not waited for), and stop at what the worker has already read. ``drain`` waits for
them before the directory's descriptor is closed, so that no thread opens a name
relative to a descriptor number that was reused. Then they list the directory the
worker reads next and ask for its files the same way (``upcoming``), on descriptors of
their own.

A large cold file gets a ``Streamer`` instead: one thread asking for its next MiBs
while the worker hashes the ones before.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import deque

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_NOATIME = getattr(os, "O_NOATIME", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PROBE = [bytearray(1)]
# Files of the next directory asked for at most: a huge one is read in batches that
# each look for themselves, and the look-ahead would only race the worker through it.
LOOK_AHEAD_FILES = 512  # cold()'s one byte: what it reads is never looked at


class Prefetcher:
    """``depth`` threads reading ahead of one worker; ``close`` stops them."""

    def __init__(self, depth: int, chunk: int) -> None:
        self._chunk = chunk
        self._cond = threading.Condition()
        # (index, directory fd or None for absolute paths, name)
        self._queue: deque[tuple[int, int | None, bytes]] = deque()
        self._next: deque[tuple[bytes, int]] = deque()  # upcoming(): (directory, device)
        self._cold_dir: bytes | None = None  # the last directory the look-ahead found cold
        self._busy = 0  # threads at work
        self._busy_here = 0  # of them, on a file of the directory ``ahead`` was given
        self._passed = -1  # the index of the last file the worker itself has opened
        self._stopped = False
        self._depth = depth
        self._threads: list[threading.Thread] = []  # started on the first cold directory

    def ahead(self, dir_fd: int | None, names: list[bytes]) -> None:
        """Read these files of the open directory ``dir_fd`` ahead, in this order.

        ``dir_fd`` None: ``names`` are absolute paths (verify's batches of the baseline).
        The threads start at the first call: a warm run never has them.
        """
        if not self._threads:
            self._threads = [
                threading.Thread(target=self._run, name="prefetch", daemon=True)
                for _ in range(self._depth)
            ]
            for t in self._threads:
                t.start()
        with self._cond:
            self._passed = -1
            self._queue.extend((i, dir_fd, name) for i, name in enumerate(names))
            self._cond.notify_all()

    def upcoming(self, directory: bytes, device: int) -> None:
        """List ``directory``, the worker's next, and read its files ahead, after these.

        So that the worker, done with this directory, does not wait for the next one's
        listing and first files: on a cold tree of small directories that wait left a
        third of the CPU idle. Only if it is on ``device`` (the directory now read,
        checked not to be a pseudo-filesystem), and only if its first file is cold
        (``was_cold``): a warm directory ends the chain, or one cold directory in a warm
        tree would have every later one read ahead. Nothing is kept: the worker lists it
        again from the cache. It gives way once the worker is there (``ahead``).
        """
        with self._cond:
            self._next.append((directory, device))
            self._cond.notify_all()

    def was_cold(self, directory: bytes) -> bool:
        """Whether the look-ahead found ``directory`` cold (and so asked for its files).

        False also where it has not got there yet: the worker then asks the cache itself.
        """
        return self._cold_dir == directory  # one reference, set by a thread: no lock

    def passed(self, index: int) -> None:
        """The worker opened the ``index``-th file itself: reading it ahead is too late."""
        self._passed = index  # one word, read by the threads without the lock

    def wait(self) -> None:
        """Wait until every file asked for has been read ahead (or found too late)."""
        with self._cond:
            while self._queue or self._next or self._busy:
                self._cond.wait()

    def drain(self) -> None:
        """Drop what is left, and wait for the reads under way: the descriptor may close."""
        with self._cond:
            self._queue.clear()
            while self._busy_here:  # reads of the next directory use descriptors of their own
                self._cond.wait()

    def close(self) -> None:
        """Stop the threads."""
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._next.clear()
            self._cond.notify_all()
        for t in self._threads:
            t.join(5)

    def _run(self) -> None:
        flags = _FLAGS | _NOATIME
        while True:
            with self._cond:
                while not self._queue and not self._next and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                if not self._queue:  # this directory's files first, then the next one
                    upcoming = self._next.popleft()
                    self._busy += 1
                    file = None
                else:
                    index, dir_fd, name = self._queue.popleft()
                    if index <= self._passed:  # the worker is there already: too late
                        if not self._queue and not self._busy:
                            self._cond.notify_all()
                        continue
                    self._busy_here += 1
                    self._busy += 1
                    file = (dir_fd, name)
            try:
                if file is None:
                    flags = self._list_ahead(*upcoming, flags)
                else:
                    flags = self._fetch(file[0], file[1], flags)
            finally:
                with self._cond:
                    self._busy -= 1
                    if file is not None:
                        self._busy_here -= 1
                    if not self._busy_here or not self._busy:  # drain()'s or wait()'s end
                        self._cond.notify_all()

    def _fetch(self, dir_fd: int | None, name: bytes, flags: int) -> int:
        """Ask for the first chunk of one file; returns the open flags to use from now on."""
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError as e:
            if e.errno == errno.EPERM and flags & _NOATIME:  # not ours: O_NOATIME needs that
                return _FLAGS
            return flags
        try:
            os.posix_fadvise(fd, 0, self._chunk, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)
        return flags

    def _list_ahead(self, directory: bytes, device: int, flags: int) -> int:
        """List the worker's next directory and ask for its files: its own descriptors."""
        try:
            fd = os.open(directory, _DIR_FLAGS)
        except OSError:
            return flags
        try:
            if os.fstat(fd).st_dev != device:
                return flags
            first, left = True, LOOK_AHEAD_FILES
            with os.scandir(fd) as listing:
                for entry in listing:
                    if self._stopped or self._queue or not left:  # ahead() took over
                        break
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    name = os.fsencode(entry.name)
                    if first:  # the file the worker's own cold() would ask about
                        first = False
                        if not cold(fd, name):
                            break  # warm: the chain of look-aheads ends here
                        self._cold_dir = directory
                    flags = self._fetch(fd, name, flags)
                    left -= 1
        except OSError:
            pass
        finally:
            os.close(fd)
        return flags


def cold(dir_fd: int | None, name: bytes) -> bool:
    """Whether the first byte of file ``name`` is not in the page cache (a read would wait).

    ``preadv2(RWF_NOWAIT)`` answers EAGAIN instead of waiting for the disk. Where it
    cannot tell (an old kernel, a filesystem without it), the answer is False: reading
    ahead is an optimisation, and a warm tree must not pay for it.
    """
    try:
        fd = os.open(name, _FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return cold_at(fd, 0)
    finally:
        os.close(fd)


def cold_at(fd: int, offset: int) -> bool:
    """Whether the byte at ``offset`` of the open file ``fd`` is not in the page cache."""
    try:
        os.preadv(fd, _PROBE, offset, os.RWF_NOWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


STREAM_MIN = 16 << 20  # a file this large, cold, is read ahead while it is hashed
STREAM_STEP = 4 << 20  # asked for at a time
STREAM_AHEAD = 64 << 20  # at most this far past what the hasher has reached


class Streamer:
    """One thread that keeps a large file's next bytes on their way while it is hashed.

    The kernel's own read-ahead keeps a few MiB in flight for a sequential reader, but a
    hasher that spends as long on each chunk as the disk does leaves the disk idle half
    the time. This thread asks for ``STREAM_STEP`` at a time (``posix_fadvise
    (WILLNEED)``, which may wait when the device's queue is full: here, not in the
    hasher), up to ``STREAM_AHEAD`` past the hasher's position.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._job: tuple[int, int, int] | None = None  # fd, next offset to ask for, end
        self._reached = 0
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self, fd: int, offset: int, end: int) -> None:
        """Read ``fd`` ahead from ``offset`` to ``end``; ``stop`` before closing ``fd``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="stream", daemon=True)
            self._thread.start()
        with self._cond:
            self._job = (fd, offset, end)
            self._reached = offset
            self._cond.notify_all()

    def at(self, offset: int) -> None:
        """The hasher has reached ``offset``."""
        if offset - self._reached >= STREAM_STEP:
            with self._cond:
                self._reached = offset
                self._cond.notify_all()

    def stop(self) -> None:
        """Ask for nothing more, and wait for the request under way: ``fd`` may close."""
        with self._cond:
            self._job = None
            while self._busy:
                self._cond.wait()

    def close(self) -> None:
        """End the thread (a worker's Scanner is replaced when the daemon reloads)."""
        with self._cond:
            self._job = None
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (
                    self._job is None
                    or self._job[1] >= min(self._job[2], self._reached + STREAM_AHEAD)
                ):
                    if self._job is not None and self._job[1] >= self._job[2]:
                        self._job = None  # all asked for
                    self._cond.wait()
                if self._closed or self._job is None:
                    return
                fd, offset, end = self._job
                self._job = (fd, offset + STREAM_STEP, end)
                self._busy = True
            try:
                os.posix_fadvise(fd, offset, min(STREAM_STEP, end - offset), os.POSIX_FADV_WILLNEED)
            except OSError:
                with self._cond:
                    self._job = None
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
