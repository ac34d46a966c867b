"""Turn one path into a FileState: metadata, and SHA-256 for regular files.

Safe reading: a file is opened with O_NOFOLLOW | O_NONBLOCK (a FIFO swapped in for a
file cannot hang us, a symlink swapped in is not followed) and read with pread(), which
a FIFO refuses (ESPIPE) without giving up its data; fstat() then says what was opened.
Symlinks, directories and special files are lstat()ed, never opened. Every OSError on an
input file becomes data (``error_type``/``error``): one bad file is a finding, not a crash.

A file that changes while it is read must not get a digest of half old, half new
content. Two ways to know it did not:

- *Settled*: its ctime lies well before the moment we opened it. Every change of content
  (write, truncate, and a utime() that hides one) moves ctime to the present, and nobody
  can set it back, so such a file did not change during the read. This needs a
  filesystem whose timestamps come from this kernel's clock (``Hasher.trusts_clock``).
  One fstat() after the read is enough; it is the common case.
- *Careful*: fstat() before and after the read agree on size, mtime and ctime. Used for
  files changed in the last few seconds, on network and FUSE filesystems, and whenever
  the settled test fails; a file that keeps changing is read at most twice.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import overload

from integrityd.attributes import NOT_READ, Extra, flag_buffer, from_fd, from_o_path
from integrityd.failures import describe, error_type, failed, missing
from integrityd.mapped import MAP_MIN, Mapper
from integrityd.messages import HINT_FILE, FileState
from integrityd.prefetch import STREAM_MIN, Streamer, cold_at

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
# A directory entry's own attributes: the directory open for reading (its inode flags
# need that), else an O_PATH descriptor, which opens nothing (a FIFO, a device).
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_NOATIME = getattr(os, "O_NOATIME", 0)

_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
}

# statfs() f_type of the filesystems whose timestamps this kernel sets from its own clock
# (linux/magic.h), and of read-only images, whose files cannot change while read. Not
# here, so always read the careful way: NFS, SMB, FUSE, 9p, Ceph (a server's clock, or
# none) and overlayfs (the clock of whatever lies below).
_LOCAL_CLOCK = frozenset({
    0xEF53,  # ext2, ext3, ext4
    0x58465342,  # xfs
    0x9123683E,  # btrfs
    0x2FC12FC1,  # zfs
    0xF2F52010,  # f2fs
    0xCA451A4E,  # bcachefs
    0x3153464A,  # jfs
    0x52654973,  # reiserfs
    0x01021994,  # tmpfs
    0x858458F6,  # ramfs
    0x73717368,  # squashfs
    0xE0F5E1E2,  # erofs
    0x9660,  # iso9660
})  # fmt: skip
# statfs() f_type of the filesystems whose files the kernel makes up as they are read
# (linux/magic.h): never entered or hashed, whatever one_filesystem says.
PSEUDO_FILESYSTEMS = {
    0x9FA0: "proc",
    0x62656572: "sysfs",
    0x64626720: "debugfs",
    0x74726163: "tracefs",
    0x73636673: "securityfs",
    0x0027E0EB: "cgroup",
    0x63677270: "cgroup2",
    0xCAFE4A11: "bpf",
    0x62656570: "configfs",
    0x00001CD1: "devpts",
    0x19800202: "mqueue",
    0x6165676C: "pstore",
    0xDE5E81E4: "efivarfs",
    0x42494E4D: "binfmt_misc",
    0x65735543: "fusectl",
}
# How far before the open a file's ctime must lie to count as settled. It covers the
# coarse clock the kernel stamps files with (a tick, at most 10 ms), filesystems that
# keep whole seconds (ext3, ext4 with 128-byte inodes) and small clock adjustments; a
# step back by more than this between settled_before() and a write is not covered.
SETTLE_NS = 5_000_000_000


def from_stat(
    path: bytes,
    st: os.stat_result,
    sha256: bytes | None = None,
    target: bytes | None = None,
    extra: Extra = NOT_READ,
) -> FileState:
    """A FileState from an ``os.stat_result`` (lstat or fstat) and the attributes read."""
    device = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
    return FileState(
        path,
        _TYPES.get(stat.S_IFMT(st.st_mode), "unknown"),
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        stat.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
        sha256,
        target,
        st.st_nlink,
        st.st_rdev if device else 0,
        *extra,
    )


def _regular(path: bytes, st: os.stat_result, sha256: bytes, extra: Extra) -> FileState:
    """``from_stat`` for a regular file just hashed: the per-file hot path, kept lean."""
    flags, caps, acl, selinux, xattrs = extra
    return tuple.__new__(  # NamedTuple's own __new__ is slower
        FileState,
        (path, "file", st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
         st.st_mode & 0o7777, st.st_uid, st.st_gid, sha256, None, st.st_nlink, 0,
         flags, caps, acl, selinux, xattrs, None, None),
    )  # fmt: skip


def settled_before() -> int:
    """The ctime (ns) before which a file opened from now on counts as settled.

    Only for a directory whose filesystem ``Hasher.trusts_clock()``; ask before opening.
    """
    return time.time_ns() - SETTLE_NS


PACE_CREDIT_S = 0.5  # --max-rate: time not used to read is credited up to this much
PACE_SLEEP_S = 0.01  # and a reader sleeps only once this far ahead: short sleeps overshoot


@dataclass(frozen=True, slots=True)
class Pace:
    """--max-rate for one worker: its share of the rate, from when the run began.

    ``since`` is time.monotonic() in the main process (CLOCK_MONOTONIC is one clock for
    every process): the start-up before a worker's first read counts as time not used.
    """

    rate: float  # bytes/s
    since: float


class Hasher:
    """Hashes files chunk by chunk into one buffer that lives as long as the worker."""

    def __init__(self, chunk_size: int, pace: Pace | None = None, *, stream: bool = False) -> None:
        # Page-aligned. A bytearray's memory starts 16 bytes past a page boundary (malloc's
        # header), and the kernel's copy out of the page cache into it ran at 1.6 GB/s on
        # the development VM (AMD EPYC), against 8.5 GB/s into an anonymous mapping.
        self._buf = mmap.mmap(-1, chunk_size)
        self._bufs = (self._buf,)
        self._view = memoryview(self._buf)
        self._flags = _OPEN_FLAGS | _NOATIME
        self._rate = pace.rate if pace is not None else None  # bytes/s for this worker
        self._next = pace.since if pace is not None else 0.0  # when the next read may start
        self._fs_type = _fs_type_reader()
        self._flag_buf = flag_buffer()  # FS_IOC_GETFLAGS writes here
        # Large files straight from the page cache (mapped.py); a paced read keeps to
        # its rate one chunk at a time.
        self._mapper = Mapper() if pace is None else None
        # A cold large file's next bytes on their way while it is hashed (prefetch.py).
        self._streamer = Streamer() if stream and pace is None else None

    def pseudo(self, directory: int | bytes) -> str | None:
        """The name of the pseudo-filesystem ``directory`` is on (proc, sysfs...), else None.

        ``directory`` is a descriptor or a path. Such a filesystem's files are made up on
        read (``/proc/<pid>/pagemap`` yields data for ever): never entered, never hashed.
        """
        if self._fs_type is None:
            return None
        return PSEUDO_FILESYSTEMS.get(self._fs_type(directory))

    def trusts_clock(self, directory: int | bytes) -> bool:
        """True if files in ``directory`` get their timestamps from this kernel's clock.

        ``directory`` is a descriptor or a path. Only where this is True may
        ``settled_before()`` be used.
        """
        return self._fs_type is not None and self._fs_type(directory) in _LOCAL_CLOCK

    def close(self) -> None:
        """Stop the thread that streams large cold files, if one was started."""
        if self._streamer is not None:
            self._streamer.close()

    def local(self, directory: int | bytes) -> bool:
        """True if ``directory`` (a descriptor or a path) is on a local filesystem."""
        return self.trusts_clock(directory)

    @overload
    def state(
        self,
        path: bytes,
        hint: str,
        defer_above: None = None,
        at: tuple[int, bytes] | None = None,
        settled_before: int | None = None,
        *,
        extra: bool = False,
    ) -> FileState: ...
    @overload
    def state(
        self,
        path: bytes,
        hint: str,
        defer_above: int,
        at: tuple[int, bytes] | None = None,
        settled_before: int | None = None,
        *,
        extra: bool = False,
    ) -> FileState | None: ...

    def state(
        self,
        path: bytes,
        hint: str,
        defer_above: int | None = None,
        at: tuple[int, bytes] | None = None,
        settled_before: int | None = None,
        *,
        extra: bool = False,
    ) -> FileState | None:
        """Describe ``path`` now; never raises for problems with the file itself.

        With ``defer_above``, a regular file larger than that is not read: None is
        returned so that the caller can hand it to a task of its own. ``at`` is
        (directory fd, name): the file is opened relative to its open directory.
        ``settled_before``: from ``settled_before()``, where the directory's filesystem
        ``trusts_clock()``; None reads the careful way. ``extra``: read the attributes of
        attributes.py too (a root checks some of them).
        """
        result = self._state(path, hint, defer_above, at, settled_before, extra)
        if result is _FLIPPED:  # a regular file where something else was: read it as one
            result = self._state(path, HINT_FILE, defer_above, at, settled_before, extra)
            if result is _FLIPPED:
                return failed(path, "changing", "its type changed while it was being read (twice)")
        return result

    def _state(  # noqa: PLR0917 - state()'s arguments, passed on
        self,
        path: bytes,
        hint: str,
        defer_above: int | None,
        at: tuple[int, bytes] | None,
        settled_before: int | None,
        extra: bool,
    ) -> FileState | None:
        """One try of ``state``; ``_FLIPPED`` where a regular file turned up unread.

        That happens when the listing saw another type (a symlink, say) or the open met
        a symlink (ELOOP), and an lstat() right after finds a regular file: the name was
        swapped meanwhile (renameat2's exchange does it atomically). Returning that file
        without a digest would read as changed content, ``corrupted`` even: the one claim
        that must never come from a race.
        """
        dir_fd, name = at if at is not None else (None, path)
        if hint != HINT_FILE:
            return _flipped(self._lstat(path, name, dir_fd, extra))
        try:
            fd = os.open(name, self._flags, dir_fd=dir_fd)
        except OSError as e:
            if not (self._flags & _NOATIME and e.errno in (errno.EPERM, errno.EINVAL)):
                return self._open_failed(path, e, name, dir_fd, extra)
            if e.errno == errno.EINVAL:
                self._flags = _OPEN_FLAGS  # this kernel or filesystem has no O_NOATIME
            # Otherwise O_NOATIME needs file ownership (or CAP_FOWNER): read without it.
            try:
                fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
            except OSError as e2:
                return self._open_failed(path, e2, name, dir_fd, extra)
        try:
            if settled_before is not None:
                return self._read_settled(fd, path, defer_above, settled_before, extra)
            # The attributes are read after the "before" and compared by the "after":
            # any change of them moves ctime, as a change of content does.
            before = os.fstat(fd)
            return self._read_careful(fd, path, defer_above, before, _extra(fd, extra))
        except OSError as e:
            return failed(path, error_type(e), describe(e))
        finally:
            os.close(fd)

    def _open_failed(
        self, path: bytes, e: OSError, name: bytes, dir_fd: int | None, extra: bool
    ) -> FileState:
        if e.errno == errno.ENOENT:
            return missing(path)
        if e.errno == errno.ELOOP:  # became a symlink since the listing (or is one, briefly)
            return _flipped(self._lstat(path, name, dir_fd, extra))
        if e.errno in (errno.EACCES, errno.EPERM):
            # lstat() needs no read permission: what it shows (type, mode, owner, size,
            # times) is still compared; only the content goes unverified.
            seen = self._lstat(path, name, dir_fd, extra=False)
            if seen.error_type is None and seen.type != "missing":
                return seen._replace(error_type=error_type(e), error=describe(e))
        return failed(path, error_type(e), describe(e))

    def _pace(self, nbytes: int) -> None:
        """Keep to --max-rate: a token bucket that may run PACE_CREDIT_S ahead of time.

        Time not used to read (a slower disk, opening and listing small files, the
        run's start-up) is credited up to PACE_CREDIT_S, so a disk slower than the cap
        is not held back, while a run's average rate stays within the cap;
        and it sleeps only once it is PACE_SLEEP_S ahead, because a sleep of a few
        microseconds after each small file lasts far longer than asked (timer slack):
        that held verify of small files to 51-55 MB/s under a cap of 200 MiB/s it never
        reached unthrottled (99-141 MB/s).
        """
        now = time.monotonic()
        self._next = max(self._next, now - PACE_CREDIT_S) + nbytes / (self._rate or 1)
        if self._next - now >= PACE_SLEEP_S:
            time.sleep(self._next - now)  # sleeping is the point: gentle on busy disks

    def _lstat(self, path: bytes, name: bytes, dir_fd: int | None, extra: bool) -> FileState:
        """A directory, symlink or special file: its metadata, never its content."""
        if extra:
            return _entry(path, name, dir_fd)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            target = os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None
        except FileNotFoundError:
            return missing(path)
        except OSError as e:
            if e.errno == errno.EINVAL:  # a symlink no more, between lstat and readlink
                return _FLIPPED
            return failed(path, error_type(e), describe(e))
        return from_stat(path, st, target=target)

    def _pread(self, fd: int, offset: int) -> int:
        n = os.preadv(fd, self._bufs, offset)
        if self._rate:
            self._pace(n)
        return n

    def _read_settled(
        self, fd: int, path: bytes, defer_above: int | None, settled_before: int, want: bool
    ) -> FileState | None:
        """Read first and fstat() once; the careful way unless the file proves settled.

        One fstat() less per file: 1.4 to 1.9 µs of 20 for a small file here. The
        attributes are read before that fstat(), so that a settled ctime covers them.
        """
        extra = from_fd(fd, self._flag_buf) if want else NOT_READ
        try:
            n = self._pread(fd, 0)
        except OSError:
            n = -1  # not a regular file after all, or a read error: the careful way says
        st = os.fstat(fd)
        if st.st_ctime_ns < settled_before and stat.S_ISREG(st.st_mode):
            if defer_above is not None and st.st_size > defer_above:
                return None
            if n == st.st_size and n < len(self._buf):
                return _regular(path, st, hashlib.sha256(self._view[:n]).digest(), extra)
            if n == len(self._buf):
                digest, length = self._digest(fd, n, st.st_size)
                after = os.fstat(fd)
                if length == after.st_size and after.st_ctime_ns < settled_before:
                    return _regular(path, after, digest, extra)
                st = after
        # ``st`` is from before the careful way's own read: a valid "before", and the
        # attributes are read again after it.
        return self._read_careful(fd, path, defer_above, st, _extra(fd, want))

    def _read_careful(
        self, fd: int, path: bytes, defer_above: int | None, before: os.stat_result, extra: Extra
    ) -> FileState | None:
        if not stat.S_ISREG(before.st_mode):
            # A directory given by path (a root, an event), or a special file swapped in
            # since the walk: its attributes were read from this same descriptor.
            return from_stat(path, before, extra=extra)
        if defer_above is not None and before.st_size > defer_above:
            return None
        if before.st_size < len(self._buf):
            # Most files fit in one read: no loop, no incremental hash object.
            n = self._pread(fd, 0)
            if n == before.st_size:
                after = os.fstat(fd)
                if (
                    after.st_size == n
                    and after.st_mtime_ns == before.st_mtime_ns
                    and after.st_ctime_ns == before.st_ctime_ns
                ):
                    return _regular(path, after, hashlib.sha256(self._view[:n]).digest(), extra)
        for _attempt in range(2):
            digest, length = self._digest(fd, 0, before.st_size)
            after = os.fstat(fd)
            if (
                length == after.st_size == before.st_size
                and after.st_mtime_ns == before.st_mtime_ns
                and after.st_ctime_ns == before.st_ctime_ns
            ):
                return _regular(path, after, digest, extra)
            before = after
            extra = _extra(fd, extra is not NOT_READ)
        return failed(path, "changing", "file changed while it was being read (twice)")

    def prefix(
        self, path: bytes, size: int | None, at: tuple[int, bytes] | None = None
    ) -> tuple[bytes, os.stat_result] | None:
        """SHA-256 of a regular file's first ``size`` bytes (None: as many as it has now).

        For files that may only grow (``grow``): what they held at baseline must still be
        their beginning, and a log written to while it is read must still be readable.
        So the read stops at ``size``, and it counts if the file is the same inode after
        it and has not shrunk below ``size``: appends during the read do not matter. None
        if the file is not a regular file, is shorter, or changed in those ways. Also
        returns the fstat() taken before the read.
        """
        dir_fd, name = at if at is not None else (None, path)
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
        except OSError:
            return None
        try:
            before = os.fstat(fd)
            want = before.st_size if size is None else size
            if not stat.S_ISREG(before.st_mode) or before.st_size < want:
                return None
            h = hashlib.sha256()
            offset = 0
            while offset < want:
                n = self._pread(fd, offset)
                if n == 0:
                    return None  # truncated meanwhile
                take = min(n, want - offset)
                h.update(self._view[:take])
                offset += take
            after = os.fstat(fd)
            if after.st_ino != before.st_ino or after.st_size < want:
                return None
            return h.digest(), before
        except OSError:
            return None
        finally:
            os.close(fd)

    def _digest(self, fd: int, offset: int, expected: int) -> tuple[bytes, int]:
        """SHA-256 and length from ``offset`` on; the buffer holds the ``offset`` bytes before.

        Reads stop one chunk past ``expected`` (the size fstat() gave): a file that keeps
        yielding data beyond its size (``/proc/<pid>/pagemap`` says 0 and yields
        terabytes) is not read for ever. The length then differs from the size, which
        the caller reports as a file that changed while it was read.
        """
        h = hashlib.sha256(self._view[:offset])
        streamer = self._streamer
        # Whether it is cold is asked of its last byte: the first read's own read-ahead
        # has already brought the next few MiB.
        if streamer is None or expected - offset < STREAM_MIN or not cold_at(fd, expected - 1):
            streamer = None
        else:
            streamer.start(fd, offset, expected)
        try:
            if self._mapper is not None and expected - offset >= MAP_MIN and self.local(fd):
                at = streamer.at if streamer is not None else None
                offset = self._mapper.hash(h, fd, offset, expected, at)
            view, size = self._view, len(self._buf)
            limit = expected + size
            while True:
                n = self._pread(fd, offset)
                h.update(view[:n])
                offset += n
                if streamer is not None:
                    streamer.at(offset)
                # A short read means end of file for a regular file; the fstat() afterwards
                # catches a file that grew in the meantime.
                if n < size or offset > limit:
                    return h.digest(), offset
        finally:
            if streamer is not None:
                streamer.stop()  # before the descriptor is closed


_FLIPPED = failed(b"", "changing", "a regular file turned up where none was read")
"""``Hasher._state``'s answer for a name swapped to a regular file while it was read."""


def _flipped(seen: FileState) -> FileState:
    """``seen``, or ``_FLIPPED`` if it is a regular file found by lstat(): not read."""
    return _FLIPPED if seen.type == "file" and seen.error_type is None else seen


def _extra(fd: int, want: bool) -> Extra:
    return from_fd(fd) if want else NOT_READ


def _entry(path: bytes, name: bytes, dir_fd: int | None) -> FileState:
    """A directory, symlink or special file with its attributes, all from one descriptor.

    The stat and the attributes come from the same open inode, so a name swapped
    between the two cannot mix one file's stat with another's attributes.
    """
    try:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            o_path = False
        except OSError as e:  # not a directory, a symlink, or no read permission
            if e.errno == errno.ENOENT:
                raise
            fd = os.open(name, _PATH_FLAGS, dir_fd=dir_fd)
            o_path = True
    except FileNotFoundError:
        return missing(path)
    except OSError as e:
        return failed(path, error_type(e), describe(e))
    try:
        st = os.fstat(fd)
        # The link read through its own descriptor: the same inode as the fstat().
        target = os.readlink(b"", dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
    except FileNotFoundError:
        os.close(fd)
        return missing(path)
    except OSError as e:
        os.close(fd)
        return failed(path, error_type(e), describe(e))
    try:
        extra = from_o_path(fd) if o_path else from_fd(fd)
    except OSError as e:  # what stat shows is still compared; the attributes went unread
        return from_stat(path, st, target=target)._replace(
            error_type=error_type(e), error=f"attributes not read: {describe(e)}"
        )
    finally:
        os.close(fd)
    return from_stat(path, st, target=target, extra=extra)


def _fs_type_reader() -> Callable[[int | bytes], int] | None:
    """statfs()'s f_type for a descriptor or a path (-1 on error); None without libc's."""
    import ctypes  # noqa: PLC0415 - workers only; the stdlib has no statfs() with f_type

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fstatfs, statfs = libc.fstatfs, libc.statfs
    except (OSError, AttributeError):
        return None
    fstatfs.argtypes = (ctypes.c_int, ctypes.c_void_p)
    statfs.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
    # struct statfs is 120 bytes on 64-bit Linux and begins with f_type (a word).
    buf = (ctypes.c_long * 32)()

    def fs_type(directory: int | bytes) -> int:
        call = fstatfs if isinstance(directory, int) else statfs
        if call(directory, buf) != 0:
            return -1
        return buf[0] & 0xFFFFFFFF

    return fs_type
