"""Hashing a large file straight from the page cache: a mapping instead of a copy.

``preadv`` copies every byte from the page cache into the worker's buffer before
SHA-256 reads it again: on the development VM one core hashed a warm 512 MiB file at
1.56 GB/s that way and at 1.76 GB/s from a mapping (``hashlib`` alone: 1.80).

A mapping has two ways to kill the process that a read does not: a page that cannot be
read (a bad sector, a failing disk: the very thing ``verify`` is for) and a page past
the end of a file truncated meanwhile are both SIGBUS on touch. So a file is hashed
from a mapping only where neither can happen:

- Each window is first faulted in by ``madvise(MADV_POPULATE_READ)`` (Linux 5.14),
  which answers an I/O error as an error, not a signal; the rest of the file is then
  read the ordinary way, which reports it as ``unreadable``.
- The file is held under a read lease (``F_SETLEASE``) while mapped. The kernel grants
  one only while nobody has the file open for writing, and makes anyone who then opens
  it for writing or truncates it wait until the lease is given back; it tells the
  holder with SIGIO, on which the mapping is dropped after the window being hashed
  (milliseconds) and the rest read the ordinary way. A lease needs the file's owner or
  CAP_LEASE; without one the file is read the ordinary way.
- Only on local filesystems (``Hasher.local``): a file on NFS, SMB or FUSE can be
  truncated by another machine or a server process that no local lease holds back.

A page evicted between its window's populate and its hashing (memory pressure within
those milliseconds) and then unreadable would still be SIGBUS: the worker dies, its
task is retried once, and a second death reports the file lost (``worker_died``).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashlib import _Hash

F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)  # Python 3.11's fcntl lacks the constant
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
MAP_MIN = 4 << 20  # smaller files: a mapping's set-up costs more than the copy it saves
WINDOW = 4 << 20  # populated and hashed at a time; a writer waits at most this long
_PAGE = mmap.PAGESIZE


class Mapper:
    """Hashes ranges of open files from read-only mappings, where that is safe.

    Only in a process's main thread: SIGIO's handler can only be set there.
    """

    def __init__(self) -> None:
        self._broken = False
        self.usable = threading.current_thread() is threading.main_thread()
        if self.usable:
            # SIGIO's default action ends the process: a lease is only ever taken with
            # this handler in place.
            signal.signal(signal.SIGIO, self._lease_broken)

    def _lease_broken(self, _signum: int, _frame: FrameType | None) -> None:
        self._broken = True

    def hash(
        self, h: _Hash, fd: int, offset: int, end: int, at: Callable[[int], None] | None = None
    ) -> int:
        """Feed ``h`` the bytes of ``fd`` from ``offset`` up to ``end``, as far as it can.

        Returns the offset it reached: ``offset`` where no mapping could be used, ``end``
        where all of it was hashed; the caller reads the rest with ``preadv``. ``at`` is
        told each offset reached (``prefetch.Streamer.at``).
        """
        if not self.usable or end - offset < MAP_MIN:
            return offset
        try:
            fcntl.fcntl(fd, F_SETLEASE, fcntl.F_RDLCK)
        except OSError:  # open for writing somewhere, not ours, or no leases here
            return offset
        self._broken = False
        try:
            return self._hash(h, fd, offset, end, at)
        finally:
            with contextlib.suppress(OSError):  # the kernel takes back a lease held too long
                fcntl.fcntl(fd, F_SETLEASE, fcntl.F_UNLCK)  # only after the mapping is gone

    def _hash(
        self, h: _Hash, fd: int, offset: int, end: int, at: Callable[[int], None] | None
    ) -> int:
        try:
            mapping = mmap.mmap(fd, end, mmap.MAP_SHARED, mmap.PROT_READ)
        except (OSError, ValueError):  # shorter than ``end`` since its fstat(), say
            return offset
        view = memoryview(mapping)
        try:
            while offset < end and not self._broken:
                start = offset - offset % _PAGE
                n = min(WINDOW, end - offset)
                try:
                    mapping.madvise(MADV_POPULATE_READ, start, offset + n - start)
                except OSError:  # unreadable, or a kernel before 5.14: read the usual way
                    break
                h.update(view[offset : offset + n])
                # Out of this process's page tables (the page cache keeps them): its RSS
                # stays one window, not the file's size.
                mapping.madvise(mmap.MADV_DONTNEED, start, offset + n - start)
                offset += n
                if at is not None:
                    at(offset)
        finally:
            view.release()
            mapping.close()
        return offset
