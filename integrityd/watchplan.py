"""Which directories the daemon watches, and how: a plan made before anything is watched.

watchdog watches a directory alone (``recursive=False``) or a whole subtree
(``recursive=True``), one emitter thread per scheduled watch. A recursive watch of a
root would also watch the directories the scan never enters (excluded ones, other
filesystems: ``/proc`` under a root of ``/``), and what happens when the kernel's watch
limit is reached half way differs between watchdog releases (7.1 drops the whole watch).
So the daemon decides itself, from a walk with the scan's own rules:

* A subtree with nothing excluded and no other filesystem below it gets one recursive
  watch, if the kernel's limit leaves room for all of its directories.
* Any other directory gets a watch of its own, and its subdirectories are planned in turn.
* Shallow first: every directory of one depth is watched before any deeper one takes
  from the budget, so new files in the upper levels are seen at once when the limit is
  reached. What the budget does not cover is counted, and left to the scans.

An idle emitter thread costs about 21 KB and no CPU (measured with watchdog 7.1.1);
``MAX_GROUPS`` bounds them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from integrityd.exclude import Excluder
from integrityd.paths import relative

MAX_GROUPS = 1024  # scheduled watches (emitter threads) in all: about 21 MB at most


@dataclass(frozen=True, slots=True)
class WatchPlan:
    """The watches for one root, shallow first, and what they leave unwatched."""

    watches: tuple[tuple[bytes, bool, int], ...]  # (directory, recursive, directories covered)
    directories: int  # directories the scan enters below (and including) the root
    unwatched: int  # of those, the ones no watch covers

    @property
    def cost(self) -> int:
        """Inotify watches the plan takes: one per watched directory."""
        return self.directories - self.unwatched


@dataclass(slots=True)
class _Tree:
    """The directories of one root in walk order, with what each subtree holds."""

    paths: list[bytes]
    parents: list[int]
    size: list[int]  # directories in the subtree, itself included
    clean: list[bool]  # nothing below is excluded or on another filesystem
    children: list[list[int]]


def _walk(
    root: bytes, start: bytes, excluder: Excluder, skip: frozenset[bytes], device: int | None
) -> _Tree:
    """Every directory the scan enters from ``start``, and which subtrees it holds whole."""
    tree = _Tree([start], [-1], [1], [True], [[]])
    todo = [0]
    while todo:
        i = todo.pop()
        try:
            with os.scandir(tree.paths[i]) as it:
                entries = sorted((e for e in it if e.is_dir(follow_symlinks=False)),
                                 key=lambda e: e.name)  # fmt: skip
        except OSError:
            continue  # unreadable or gone: watched alone, as the scan reports it
        prefix = tree.paths[i].rstrip(b"/") + b"/"
        for entry in entries:
            path = prefix + os.fsencode(entry.name)
            if path in skip or (excluder and excluder.matches(relative(root, path), True)):
                tree.clean[i] = False
                continue
            if device is not None:
                try:
                    on_other = entry.stat(follow_symlinks=False).st_dev != device
                except OSError:
                    continue
                if on_other:  # a mount point: the scan records it but does not enter it
                    tree.clean[i] = False
                    continue
            j = len(tree.paths)
            tree.paths.append(path)
            tree.parents.append(i)
            tree.size.append(1)
            tree.clean.append(True)
            tree.children.append([])
            tree.children[i].append(j)
            todo.append(j)
    for j in range(len(tree.paths) - 1, 0, -1):  # children come after their parent
        p = tree.parents[j]
        tree.size[p] += tree.size[j]
        tree.clean[p] = tree.clean[p] and tree.clean[j]
    return tree


def plan(
    root: bytes,
    start: bytes,
    exclude: Sequence[str],
    skip: frozenset[bytes],
    *,
    one_filesystem: bool,
    budget: int,
    groups: int,
) -> WatchPlan:
    """Plan the watches of ``start``, ``root`` or a directory below it.

    At most ``budget`` inotify watches and ``groups`` emitter threads; ``exclude`` and
    ``one_filesystem`` apply as below ``root``.
    """
    try:
        device = os.lstat(root).st_dev if one_filesystem else None
    except OSError:
        return WatchPlan((), 0, 0)
    tree = _walk(root, start, Excluder(exclude), skip, device)
    watches: list[tuple[bytes, bool, int]] = []
    watched = 0
    level = [0]
    while level and budget > 0 and groups > 0:
        below: list[int] = []
        for k, i in enumerate(level):
            if budget <= 0 or groups <= 0:
                break
            later = min(len(level) - k - 1, groups - 1)  # one watch kept for each sibling
            # A clean leaf costs one watch either way; recursive, its new subdirectories
            # are watched by watchdog itself.
            if tree.clean[i] and (tree.size[i] == 1 or tree.size[i] <= budget - later):
                watches.append((tree.paths[i], True, tree.size[i]))
                budget -= tree.size[i]
                watched += tree.size[i]
            else:
                watches.append((tree.paths[i], False, 1))
                budget -= 1
                watched += 1
                below += tree.children[i]
            groups -= 1
        level = below
    return WatchPlan(tuple(watches), len(tree.paths), len(tree.paths) - watched)


def out_of_watches(e: OSError) -> bool:
    """True for the errors that mean the kernel's limits are reached, not a bad path."""
    return e.errno in (errno.ENOSPC, errno.EMFILE)


def user_watch_count() -> int:
    """Inotify watches held by all the processes of this user that may be inspected.

    The kernel's limit (max_user_watches) counts them all, not only this process's.
    """
    uid = os.getuid()
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            count += process_watch_count(pid)
        except OSError:
            continue  # gone, or not ours to read
    return count


def process_watch_count(pid: str = "self") -> int:
    """Inotify watches one process holds, as the kernel counts them (/proc/PID/fdinfo)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                count += sum(line.startswith("inotify wd:") for line in f)
        except OSError:
            continue  # closed meanwhile
    return count
