"""List directories one at a time, without following symlinks.

Walking is spread over the hash workers: each lists a directory, and the directories it
finds become new tasks. Listing stays on the root's filesystem unless the root says
``one_filesystem: false``: a mount point is recorded as a directory but not entered.
"""

from __future__ import annotations

import errno
import itertools
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from integrityd.exclude import Excluder
from integrityd.failures import describe, error_type
from integrityd.messages import HINT_FILE, HINT_OTHER, ErrorType
from integrityd.paths import relative

_FS_ENCODING = sys.getfilesystemencoding()
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


PATH_MAX = 4096
"""Linux's limit on a path given to a system call, its NUL included (ENAMETOOLONG)."""


def open_directory(directory: bytes) -> int:
    """Open ``directory`` for listing; one name at a time where the path is too long.

    A tree may nest deeper than PATH_MAX bytes (anyone may make one, and an intruder
    would keep his files there: a walk that opens directories by path stopped at
    "File name too long"). Such a directory is opened from "/" down with openat(),
    each step O_NOFOLLOW: no symlink is followed on the way, as the walk follows none.
    """
    if len(directory) < PATH_MAX:
        return os.open(directory, _DIR_FLAGS)
    fd = os.open(b"/", _DIR_FLAGS)
    try:
        for name in directory.split(b"/"):
            if name:
                parent, fd = fd, -1
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                finally:
                    os.close(parent)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd


Entry = tuple[bytes, bytes, str]
"""(name, path, hint) of one directory entry."""


@dataclass(slots=True)
class Listing:
    """One directory's entries; ``subdirs`` are the ones to descend into.

    A listing cut short at ``limit`` entries (a huge directory) holds the rest in
    ``more``: an iterator over the same open directory that yields them as they are
    read, and fills ``subdirs`` and ``dir_stats`` as it goes. Memory then stays in
    proportion to what the caller keeps, not to the directory.
    """

    entries: list[Entry] = field(default_factory=list)
    subdirs: list[bytes] = field(default_factory=list)
    # lstat() of the subdirectories whose device was checked, by name: the worker records
    # them from this instead of asking the kernel a second time.
    dir_stats: dict[bytes, os.stat_result] = field(default_factory=dict)
    error: str | None = None  # why it could not be listed, for people
    error_type: ErrorType | None = None  # and for programs
    fd: int | None = None  # the directory, open: the caller reads its entries relative to it
    more: Iterator[Entry] | None = None  # the entries past ``limit``, still to be read


def list_dir(
    directory: bytes,
    root: bytes,
    excluder: Excluder,
    skip: frozenset[bytes],
    device: int | None,
    *,
    limit: int | None = None,
    inode_order: bool = False,
) -> Listing:
    """List ``directory`` using only the entry types getdents returns (no stat per file).

    The directory stays open (``Listing.fd``; the caller closes it) so that its entries
    are opened relative to it: the kernel resolves one name instead of the whole path
    (3 of 12 µs per small file on the development VM), and a path component swapped for
    a symlink mid-walk cannot lead the walk elsewhere. ``device`` is the root's st_dev
    when the walk must stay on one filesystem. A directory that vanished, or became a
    symlink, lists as empty, so its baseline entries read as removed. With ``limit``,
    at most that many entries are read now, and ``Listing.more`` yields the rest.

    ``inode_order``: the entries come sorted by inode number (getdents' own d_ino: no
    system call), ``more`` a ``limit`` at a time. For a spinning disk: a filesystem
    places a directory's inodes, and mostly their data, in the order they were made,
    while the listing's order is a hash of the names (ext4's htree), which sends the
    heads across the disk between any two files (as tar, rsync and fsck know).
    """
    try:
        fd = open_directory(directory)
    except (FileNotFoundError, NotADirectoryError):
        return Listing()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return Listing()
        return Listing(error=describe(e), error_type=error_type(e))
    out = Listing(fd=fd)
    prefix = directory.rstrip(b"/") + b"/"
    try:
        inodes: dict[bytes, int] | None = {} if inode_order else None
        rest = _entries(os.scandir(fd), out, prefix, root, excluder, skip, device, inodes)
        # Taken in C (extend over islice), not by a Python loop that appended and tested
        # the limit per entry (profiled as the largest new cost per directory entry).
        out.entries.extend(rest if limit is None else itertools.islice(rest, limit))
        if limit is not None and len(out.entries) >= limit:
            out.more = rest if inodes is None else _by_inode(rest, inodes, limit)
        if inodes is not None:
            out.entries.sort(key=lambda e: inodes.pop(e[0]))
    except OSError as e:
        os.close(fd)
        return Listing(error=describe(e), error_type=error_type(e))
    except BaseException:
        os.close(fd)
        raise
    return out


def _entries(  # noqa: PLR0917 - list_dir's state, passed on
    entries: os._ScandirIterator[str],
    out: Listing,
    prefix: bytes,
    root: bytes,
    excluder: Excluder,
    skip: frozenset[bytes],
    device: int | None,
    inodes: dict[bytes, int] | None,
) -> Iterator[Entry]:
    """The entries of an open directory that the walk keeps, noting subdirectories.

    ``inodes``: where given, each kept entry's inode number is noted there by name.
    """
    matches = excluder.matches if excluder else None  # __bool__ once, not per entry
    with entries:
        for entry in entries:
            name = entry.name.encode(_FS_ENCODING, "surrogateescape")  # as os.fsencode
            path = prefix + name
            if path in skip:
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = not is_dir and entry.is_file(follow_symlinks=False)
            except OSError:
                is_dir = is_file = False  # the worker's lstat will say what it is
            if matches is not None and matches(relative(root, path), is_dir):
                continue
            if is_dir and device is None:
                out.subdirs.append(path)
            elif is_dir and (st := _lstat(entry)) is not None:
                out.dir_stats[name] = st
                if st.st_dev == device:  # else a mount point: recorded, not entered
                    out.subdirs.append(path)
            if inodes is not None:
                inodes[name] = entry.inode()
            yield name, path, HINT_FILE if is_file else HINT_OTHER


def _by_inode(entries: Iterator[Entry], inodes: dict[bytes, int], batch: int) -> Iterator[Entry]:
    """``entries``, sorted by inode ``batch`` at a time (a huge directory's rest)."""
    while chunk := list(itertools.islice(entries, batch)):
        chunk.sort(key=lambda e: inodes.pop(e[0]))
        yield from chunk


def _lstat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        return entry.stat(follow_symlinks=False)
    except OSError:
        return None
