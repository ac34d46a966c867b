"""A hash worker's unit of work: a few directories (or a few files) against the baseline.

For each directory the worker lists it, hashes what it holds, reads the directory's
baseline entries in one query and compares. Unchanged entries stop here; only findings,
rows to write and paths to delete go on to the collector, so the single collector does
work in proportion to the differences, not to the tree. A baseline entry the listing
lacks is removed; if it was a directory, so is everything below it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import pickle
import sqlite3
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import cast

from integrityd import logsetup
from integrityd.attributes import carry_trusted, sees_trusted
from integrityd.compare import classify
from integrityd.config import EXTENDED
from integrityd.errors import IntegritydError
from integrityd.exclude import Excluder
from integrityd.failures import describe, error_type, failed, missing
from integrityd.hashing import Hasher, Pace, from_stat, settled_before
from integrityd.manifest import BaselineReader, row, sqlite_error
from integrityd.messages import (
    HINT_FILE,
    RECORDED,
    DirTask,
    ErrorType,
    Failed,
    FileState,
    FileTask,
    Finding,
    Hunger,
    Job,
    Task,
    TaskResult,
)
from integrityd.paths import join, relative, split
from integrityd.prefetch import Prefetcher, cold
from integrityd.rules import NONE, Rules
from integrityd.signals import ignore_stop_signals, name_process
from integrityd.walk import PATH_MAX, Entry, Listing, list_dir, open_directory

log = logsetup.get_logger()

Emit = Callable[[list[Task], TaskResult], None]
"""Sends part of a task's result to main before the task ends."""
_Dir = tuple[bytes, int, int | None, dict[bytes, os.stat_result], int | None, int]
"""A directory being compared: (path, scope, fd, dir_stats, settled_before, inherited)."""

LARGE_FILE = 16 << 20  # hashed as a task of its own, so large files spread over workers
HUGE_DIR = 2048  # a directory with more entries than this is read and compared in batches
FILES_PER_TASK = 512  # a batch: handed to an idle worker, or compared here
FLUSH_ENTRIES = 2048  # a huge directory's findings go to main this often, not at the end
PREFETCH_MIN = 16  # regular files a directory needs before its files are read ahead
# A recursive DirTask walks on into the subdirectories it finds until it has taken
# TASK_BUDGET_S or compared TASK_BUDGET_ENTRIES entries, then hands back the directories
# it did not get to as up to HAND_BACK tasks of at least HAND_BACK_DIRS directories each
# (fewer, if fewer are left). Scanner.run says why.
TASK_BUDGET_S = 0.01
TASK_BUDGET_ENTRIES = 2048
HAND_BACK = 4
HAND_BACK_DIRS = 8
# The daemon's scans use shorter tasks: a live change waits for the few a worker has
# queued (pipeline.INFLIGHT) to finish.
WATCH_TASK_BUDGET_S = 0.0025
_XATTRS = RECORDED.index("xattrs")  # in a baseline row's recorded fields


class _Found:
    """What a task has found so far; becomes a TaskResult once the task is done."""

    def __init__(self, scope: int = -1) -> None:
        self.scope = scope
        self.started = time.monotonic()
        self.files = 0
        self.bytes = 0
        self.findings: list[Finding] = []
        self.rows: list[tuple[object, ...]] = []
        self.deletes: list[bytes] = []
        self.unreadable_dirs: list[tuple[bytes, ErrorType, str]] = []
        self.verified: list[tuple[bytes, bytes]] = []
        self.matched: list[bytes] = []
        self._parent = b""
        self._parent_blob = bytearray()

    def write(self, key: tuple[bytes, bytes], state: FileState) -> None:
        """Make ``state`` the baseline entry at ``key`` (parent, name)."""
        parent, name = key
        if parent != self._parent:  # one parent blob for all of a directory's rows
            self._parent, self._parent_blob = parent, bytearray(parent)
        self.rows.append(row(self._parent_blob, name, state))

    def report(self) -> TaskResult:
        return TaskResult(
            self.files, self.bytes, self.findings, self.rows, self.deletes, self.unreadable_dirs,
            self.verified, self.matched, self.started, self.scope,
        )  # fmt: skip

    def flush(self) -> TaskResult:
        """What was found so far, as a part of the task's result; then start afresh."""
        part = self.report()
        self.files = self.bytes = 0
        self.findings, self.rows, self.deletes, self.unreadable_dirs = [], [], [], []
        self.verified, self.matched = [], []
        return part


class Scanner:
    """Per-worker state: the hash buffer, a baseline reader, and each scope's rules."""

    def __init__(
        self,
        job: Job,
        chunk_size: int,
        pace: Pace | None = None,
        *,
        budget_s: float | None = None,
        budget_entries: int = TASK_BUDGET_ENTRIES,
        hungry: Hunger | None = None,
        emit: Emit | None = None,
    ) -> None:
        self.job = job
        self.hungry = hungry
        self.emit = emit  # sends part of a task's result at once (a huge directory's)
        policy = job.policy
        self.writes = policy.writes
        self.initialises = not policy.compares  # init: records what it finds, compares nothing
        self.verifies = policy.verifies
        self.watches = policy.live
        if budget_s is None:
            budget_s = WATCH_TASK_BUDGET_S if self.watches else TASK_BUDGET_S
        self.budget_s = budget_s
        self.budget_entries = budget_entries
        # Reading ahead: not where reads are paced (--max-rate, --idle-io), which it
        # would bypass; a root limited to a few readers (a spinning disk) never reads
        # ahead across files, but still streams a large file (one sequential reader).
        paced = pace is not None or job.idle
        self.hasher = Hasher(chunk_size, pace, stream=bool(job.io_depth) and not paced)
        # The directory this worker reads next, where it knows (its walk's next, or the
        # current one's last subdirectory), for the prefetcher to list ahead; and the
        # one it did list ahead.
        self._after: bytes | None = None
        self._upcoming: bytes | None = None
        self._looked: bytes | None = None
        self.prefetch = Prefetcher(job.io_depth, chunk_size) if job.io_depth and not paced else None
        # The daemon runs for months while people accept changes: no long-lived snapshot.
        # A reader checks what it reads against the seal; a writer's collector checked
        # all of it, and its lock keeps it so until the run ends.
        self.baseline = BaselineReader(
            job.manifest,
            snapshot=not self.watches,
            key=None if self.writes else job.verify_key,
            min_seq=job.min_seq,
            trusted=job.trusted,
        )
        self.excluders = [Excluder(s.root.exclude) for s in job.scopes]
        self.rules = [Rules(s.root) for s in job.scopes]
        self.extra = [bool(r.every & EXTENDED) for r in self.rules]  # attributes.py's too
        # Without CAP_SYS_ADMIN the kernel hides trusted.* xattrs: the baseline's are not
        # compared (the collector says so once per run), and a writer keeps them.
        self.hides_trusted = any(self.extra) and not sees_trusted()
        self.accepts = policy.accepts  # accept --grown: only these findings are written
        self.devices = [_device(s.start) if s.root.one_filesystem else None for s in job.scopes]
        self.limited = [bool(s.root.workers) for s in job.scopes]  # a few readers at once
        # The walk of a root that stays on one filesystem asks once; other walks ask per
        # directory (a statfs() each, which cost 7 µs a directory on the development VM).
        self.clock = [
            self.hasher.trusts_clock(s.start) if s.root.one_filesystem else None for s in job.scopes
        ]

    def close(self) -> None:
        """Release the baseline reader and stop the threads reading ahead."""
        self.baseline.close()
        self.hasher.close()
        if self.prefetch is not None:
            self.prefetch.close()

    def run(self, task: Task) -> tuple[list[Task], TaskResult, int]:
        """Do one task; return the tasks it spawned, what it found and the directories walked.

        A recursive DirTask does not stop at its own directories: it goes on into the
        subdirectories it finds, depth first, until the budget (time or entries compared)
        is spent, and hands back the directories it did not get to as a few new tasks.
        Each task costs about 200 µs of pipes, pickling and bookkeeping across three
        processes; at one task per directory, a tree of small directories (node_modules,
        maildirs, /usr/share/locale) spent more on that than on hashing. The budget keeps
        tasks short enough to spread over the workers and to end a run evenly, and handing
        back several tasks lets idle workers in at once. Each of those gets several
        directories: split one by one, three tasks in four walked a single directory.

        While workers sit idle with no task waiting (``hungry``: at the start of a run, as
        it ends), a task hands back after its current directory, one share for each of
        them and one for this worker. Without this, 15 of 16 workers waited out the first
        task's budget, and the ends of a few long walks decided when a run ended.
        """
        found = _Found(task.scope)
        if isinstance(task, FileTask):
            return self._files(task, found), found.report(), 0
        spawned: list[Task] = []
        if not task.recursive:
            for path in task.paths:
                spawned += self._directory(path, task.scope, found)[1]
            return spawned, found.report(), 0
        todo = list(reversed(task.paths))
        walked = 0
        deadline = time.monotonic() + self.budget_s
        while todo and (
            walked == 0
            or (
                found.files < self.budget_entries
                and time.monotonic() < deadline
                and not (len(todo) > 1 and self._hungry(task.scope))
            )
        ):
            directory = todo.pop()
            self._after = todo[-1] if todo else None
            subdirs, files = self._directory(directory, task.scope, found)
            todo += subdirs
            spawned += files
            walked += 1
        if len(todo) > 1 and (hungry := self._hungry(task.scope)):
            tasks = min(len(todo), hungry + 1)
            self._fed(tasks - 1)
        else:
            tasks = max(1, min(HAND_BACK, len(todo) // HAND_BACK_DIRS)) if todo else 0
        spawned += (DirTask(tuple(todo[i::tasks]), task.scope) for i in range(tasks))
        return spawned, found.report(), walked

    def _hungry(self, scope: int) -> int:
        """How many workers wait with no task queued for them (main's count; 0 if none).

        0 for a root limited to a few readers at once (a spinning disk): its tasks would
        wait for that limit, not go to the idle workers.
        """
        if self.hungry is None or self.limited[scope]:
            return 0
        return self.hungry.value

    def _fed(self, shares: int) -> None:
        # Only a hint, which main sets again after each dispatch: lowering it keeps the
        # other workers from splitting their walks for the same idle workers meanwhile.
        if self.hungry is not None:
            self.hungry.value = max(0, self.hungry.value - shares)

    def _settled_before(self, directory: int | bytes, trusted: bool | None = None) -> int | None:
        """hashing.settled_before() if the directory's filesystem trusts_clock(), else None.

        ``trusted``: known already (``self.clock``), or None to ask statfs().
        """
        if trusted is None:
            trusted = self.hasher.trusts_clock(directory)
        return settled_before() if trusted else None

    def _elsewhere(self, scope: int, directory: bytes) -> bool:
        """watch: True if ``directory`` is on another filesystem than a one_filesystem root.

        A full walk never enters such a directory; events from inside it must not report
        what the walk does not (a mount over part of the tree is found by the scans).
        """
        device = self.devices[scope]
        if device is None or not self.watches:
            return False
        try:
            return os.lstat(directory).st_dev != device
        except OSError:
            return False  # gone: the path reads as missing, as it should

    def _directory(
        self, directory: bytes, scope: int, found: _Found
    ) -> tuple[list[bytes], list[FileTask]]:
        """Compare one directory's entries; return its subdirectories and tasks for the rest.

        The rest: files left to other tasks (large ones, the tail of a huge directory).
        """
        if self._elsewhere(scope, directory):
            return [], []
        listing = list_dir(
            directory,
            self.job.scopes[scope].root.path,
            self.excluders[scope],
            self.job.skip,
            self.devices[scope],
            limit=HUGE_DIR + 1,
            inode_order=self.limited[scope],  # a spinning disk: fewer seeks
        )
        if listing.error is not None:
            found.unreadable_dirs.append((directory, listing.error_type or "os", listing.error))
            return [], []
        # Another filesystem is met below a root only where one_filesystem is false; a
        # root itself may be anywhere. fstatfs() of the open directory: no name to swap.
        asks = self.devices[scope] is None or directory == self.job.scopes[scope].start
        kind = self.hasher.pseudo(listing.fd) if asks and listing.fd is not None else None
        if kind is not None and listing.fd is not None:
            os.close(listing.fd)
            log.warning(
                "pseudo_filesystem",
                message=f"{os.fsdecode(directory)} is on {kind}, a filesystem the kernel "
                "makes up as it is read: recorded, not entered",
                path=os.fsdecode(directory),
                filesystem=kind,
            )
            return [], []
        self._upcoming = listing.subdirs[-1] if listing.subdirs else self._after
        self._after = None
        try:
            return listing.subdirs, self._entries(directory, scope, listing, found)
        finally:
            if listing.fd is not None:
                os.close(listing.fd)

    def _entries(
        self, directory: bytes, scope: int, listing: Listing, found: _Found
    ) -> list[FileTask]:
        # Taken before the first open, as settled_before() requires.
        settled = self._settled_before(
            listing.fd if listing.fd is not None else directory, self.clock[scope]
        )
        rules = self.rules[scope]
        root = self.job.scopes[scope].root.path
        inherited = rules.inherited(relative(root, directory)) if rules else NONE
        ctx = (directory, scope, listing.fd, listing.dir_stats, settled, inherited)
        if listing.more is not None:
            return self._huge(ctx, listing, found)
        baseline = self.baseline.children(directory)  # name -> recorded fields
        spawned = self._each(ctx, listing.entries, baseline, found)
        for name, recorded in baseline.items():  # not listed, or vanished meanwhile
            self._removed(found, scope, FileState.from_recorded(join(directory, name), recorded))
        return spawned

    def _each(
        self,
        ctx: _Dir,
        entries: list[Entry],
        baseline: dict[bytes, tuple[object, ...]],
        found: _Found,
    ) -> list[FileTask]:
        """Compare ``entries`` of a directory; pop what they match from ``baseline``."""
        scope, fd = ctx[1], ctx[2]
        spawned: list[FileTask] = []
        prefetch = None
        if (
            self.prefetch is not None
            and fd is not None
            and len(entries) >= PREFETCH_MIN
            and not self.limited[scope]
        ):
            # Only where it pays: enough entries, and the first file not in the page
            # cache. Warm, the threads' wake-ups cost more than they could save.
            # A directory listed ahead reads warm because of that: it counts as cold
            # where the look-ahead found it so.
            first = next((name for name, _, hint in entries if hint == HINT_FILE), None)
            looked = self._looked == ctx[0] and self.prefetch.was_cold(ctx[0])
            self._looked = None
            if first is not None and (looked or cold(fd, first)):
                prefetch = self.prefetch
                if not looked:  # else the look-ahead has asked for them, or is asking
                    prefetch.ahead(fd, [name for name, _, hint in entries if hint == HINT_FILE])
                if self._upcoming is not None:  # once: a huge directory comes here per batch
                    prefetch.upcoming(self._upcoming, os.fstat(fd).st_dev)
                    self._looked, self._upcoming = self._upcoming, None
        try:
            return self._each_entry(ctx, entries, baseline, found, spawned, prefetch)
        finally:
            if prefetch is not None:
                prefetch.drain()  # before the directory's descriptor is closed

    def _each_entry(  # noqa: PLR0917 - _each's state, passed on
        self,
        ctx: _Dir,
        entries: list[Entry],
        baseline: dict[bytes, tuple[object, ...]],
        found: _Found,
        spawned: list[FileTask],
        prefetch: Prefetcher | None,
    ) -> list[FileTask]:
        directory, scope, fd, dir_stats, settled, inherited = ctx
        default = self.rules[scope].default
        rules = self.rules[scope] or None  # Rules.__bool__ once, not per entry
        root = self.job.scopes[scope].root.path
        files = 0
        for name, path, hint in entries:
            if prefetch is not None and hint == HINT_FILE:
                prefetch.passed(files)
                files += 1
            at = (fd, name) if fd is not None else None
            extra = self.extra[scope]
            # The walker's lstat() of a subdirectory serves unless its attributes are due.
            st = dir_stats.get(name) if hint != HINT_FILE and not extra else None
            if st is not None:
                state: FileState | None = from_stat(path, st)
            else:
                state = self.hasher.state(path, hint, LARGE_FILE, at, settled, extra=extra)
            if state is None:
                spawned.append(FileTask((path,), scope))
                baseline.pop(name, None)
            elif state.type != "missing":  # one that vanished stays in `baseline`: removed
                attrs = (
                    rules.attrs(relative(root, path), state.type == "dir", inherited)
                    if rules is not None
                    else default
                )
                recorded = baseline.pop(name, None)
                self._compare(found, scope, state, recorded, (directory, name), attrs, at)
        return spawned

    def _huge(self, ctx: _Dir, listing: Listing, found: _Found) -> list[FileTask]:
        """A directory too big to hold: its listing and its baseline, a batch at a time.

        Each batch of FILES_PER_TASK entries is compared with its own baseline rows (one
        query), or, while other workers wait for work, handed to them as a task. What is
        found goes to main every FLUSH_ENTRIES entries. An entry of the baseline that the
        listing lacks is found without holding either whole: the batches count the rows
        they matched, and only if the directory's baseline holds more are its names read
        again, one row at a time, and looked up in the directory.
        """
        directory, scope, fd, _, _, _ = ctx
        spawned: list[FileTask] = []
        matched = 0
        vanished: set[bytes] = set()  # listed, then gone before it was read: rare
        entries = itertools.chain(listing.entries, listing.more or ())
        first, since_flush = True, 0
        try:
            while batch := list(itertools.islice(entries, FILES_PER_TASK)):
                baseline = self.baseline.children_named(directory, [e[0] for e in batch])
                matched += len(baseline)
                files = [e for e in batch if e[2] == HINT_FILE]
                if not first and files and self._hungry(scope):
                    self._fed(1)
                    spawned.append(FileTask(tuple(e[1] for e in files), scope))
                    batch = [e for e in batch if e[2] != HINT_FILE]
                    for name, _, _ in files:
                        baseline.pop(name, None)
                spawned += self._each(ctx, batch, baseline, found)
                for name, recorded in baseline.items():
                    vanished.add(name)
                    path = join(directory, name)
                    self._removed(found, scope, FileState.from_recorded(path, recorded))
                first, since_flush = False, since_flush + len(batch)
                if self.emit is not None and (since_flush >= FLUSH_ENTRIES or spawned):
                    self.emit(list(spawned), found.flush())
                    spawned.clear()
                    since_flush = 0
        except OSError as e:  # the directory could not be read to its end
            found.unreadable_dirs.append((directory, error_type(e), describe(e)))
            return spawned
        if self.baseline.count_children(directory) > matched:
            self._unlisted(directory, scope, fd, vanished, found)
        return spawned

    def _unlisted(
        self, directory: bytes, scope: int, fd: int | None, known: set[bytes], found: _Found
    ) -> None:
        """A huge directory's baseline entries that its listing lacked: removed (or excluded)."""
        root = self.job.scopes[scope].root.path
        for name, recorded in self.baseline.each_child(directory):
            if name in known:
                continue
            path = join(directory, name)
            if path not in self.job.skip and not self.excluders[scope].matches(
                relative(root, path), recorded[0] == "dir"
            ):
                try:
                    os.stat(name if fd is not None else path, dir_fd=fd, follow_symlinks=False)
                    continue  # there: it was listed and compared
                except FileNotFoundError:
                    pass
                except OSError:
                    continue  # there, but not to be looked at: the listing had it
            self._removed(found, scope, FileState.from_recorded(path, recorded))

    def _files(self, task: FileTask, found: _Found) -> list[Task]:
        # verify's batches of a cold backup store: read ahead as in a directory walk.
        prefetch = None
        paths = task.paths
        if (
            self.prefetch is not None
            and len(paths) >= PREFETCH_MIN
            and not self.limited[task.scope]
            and cold(None, paths[0])
        ):
            prefetch = self.prefetch
            prefetch.ahead(None, list(paths))
        try:
            self._each_file(task, found, prefetch)
        finally:
            if prefetch is not None:
                prefetch.drain()
        return []

    def _each_file(self, task: FileTask, found: _Found, prefetch: Prefetcher | None) -> None:
        elsewhere: dict[bytes, bool] = {}
        settled: dict[bytes, int | None] = {}
        deep = _DeepDirs()
        baseline = self.baseline.lookup_many(task.paths)
        paths = task.paths
        if self.limited[task.scope]:  # a spinning disk: in the recorded inodes' order
            paths = tuple(sorted(paths, key=lambda p: _inode(baseline.get(p))))
        with deep:
            for i, path in enumerate(paths):
                if prefetch is not None:
                    prefetch.passed(i)
                parent, name = split(path)
                if path != self.job.scopes[task.scope].start:
                    if parent not in elsewhere:
                        elsewhere[parent] = self._elsewhere(task.scope, parent)
                    if elsewhere[parent]:
                        continue
                if parent not in settled:
                    # Per directory even under a root on one filesystem: some of these
                    # paths come from the daemon's events or verify's baseline.
                    settled[parent] = self._settled_before(parent)
                try:
                    at = deep.at(parent, name) if len(path) >= PATH_MAX else None
                except OSError as e:  # a directory on its way is gone, or not one now
                    at, state = None, _unopened(path, e)
                else:
                    state = self.hasher.state(
                        path,
                        HINT_FILE,
                        at=at,
                        settled_before=settled[parent],
                        extra=self.extra[task.scope],
                    )
                self._one_file(task.scope, found, state, baseline.get(path), (parent, name), at)

    def _one_file(  # noqa: PLR0917 - _each_file's state, passed on
        self,
        scope: int,
        found: _Found,
        state: FileState,
        old: FileState | None,
        key: tuple[bytes, bytes],
        at: tuple[int, bytes] | None,
    ) -> None:
        """Compare one of a FileTask's paths with its baseline entry ``old``."""
        if state.type != "missing":
            recorded = old.recorded() if old else None
            rel = relative(self.job.scopes[scope].root.path, state.path)
            attrs = self.rules[scope].for_path(rel, state.type == "dir")
            self._compare(found, scope, state, recorded, key, attrs, at)
        elif old is not None:
            self._removed(found, scope, old)
        elif self.watches:
            found.matched.append(state.path)  # absent, as in the baseline

    def _compare(  # noqa: PLR0917 - the hot path: positional arguments are the cheapest
        self,
        found: _Found,
        scope: int,
        state: FileState,
        recorded: tuple[object, ...] | None,
        key: tuple[bytes, bytes],
        attrs: frozenset[str],
        at: tuple[int, bytes] | None = None,
    ) -> None:
        """Compare with the ``recorded`` (type, size, ..., target) fields of the baseline.

        ``key`` is the entry's (parent, name), as the caller already has it: splitting the
        path again costs a microsecond, and one parent object for a directory's rows
        pickles once. ``attrs``: what this path is compared on (its root's check, or a
        rule's); ``at``: (directory fd, name), to read the file again for ``grow``.
        """
        found.files += 1
        if state.type == "file":
            found.bytes += state.size
        if self.verifies and state.error_type is None:
            found.verified.append(key)
        if recorded is not None and state.error_type is None:
            if self.hides_trusted and recorded != state.recorded():
                state = _with_unseen_trusted(state, recorded)
            if recorded == state.recorded():
                if self.watches:
                    found.matched.append(state.path)
                return  # the common case: exactly as in the baseline
        if "grow" in attrs and state.error_type == "changing":
            state = self._snapshot(state, at)  # a log written to as it is read
        if self.initialises and state.error_type is None:
            # init reports only what it cannot read: classifying the rest would be thrown away
            found.write(key, state)
            return
        old = FileState.from_recorded(state.path, recorded) if recorded is not None else None
        finding = self._classify(old, state, attrs, key, at)
        if finding is None and self.watches:
            found.matched.append(state.path)
        accepted = self.accepts is None or finding is None or finding.action in self.accepts
        if finding is not None and accepted:  # for init, only "unreadable" comes this far
            found.findings.append(finding)
        if self.writes and state.error_type is None and accepted:
            found.write(key, state)
        if old is not None and old.type == "dir" and state.type not in ("dir", "unknown"):
            self._orphaned(found, old)

    def _classify(
        self,
        old: FileState | None,
        new: FileState,
        attrs: frozenset[str],
        key: tuple[bytes, bytes],
        at: tuple[int, bytes] | None,
    ) -> Finding | None:
        """compare.classify, and for ``grow`` what only the file system can tell it."""
        if "grow" in attrs and old is not None and _grew_or_moved(old, new):
            return self._growth(old, new, attrs, key, at)
        # New here, but maybe a rotation's other end: another entry's file, grown.
        continues = (
            "grow" in attrs
            and old is None
            and _read_file(new)
            and self._continues_a_sibling(key[0], key[1], new, at)
        )
        return None if continues else classify(old, new, attrs)

    def _snapshot(self, state: FileState, at: tuple[int, bytes] | None) -> FileState:
        """A file that may only grow and kept changing while read: hash what it held then.

        Appends during the read do not matter to ``grow``: the digest of the bytes the
        file had when opened is its state (see Hasher.prefix).
        """
        got = self.hasher.prefix(state.path, None, at)
        if got is None:
            return state
        digest, st = got
        return from_stat(state.path, st, sha256=digest)

    def _growth(
        self,
        old: FileState,
        new: FileState,
        attrs: frozenset[str],
        key: tuple[bytes, bytes],
        at: tuple[int, bytes] | None,
    ) -> Finding | None:
        """``grow``: grown, rotated, the file a rotation moved here, or a rewrite.

        A new inode at the path may be a rotation: the baseline's file lives on under
        another name in the same directory (``syslog`` → ``syslog.1``) with the
        baseline's content as its beginning. Then the path is ``rotated`` and its new
        file is compared from empty. The other name is the same rotation seen from the
        other side: its file is another entry's baseline, grown, and no finding.
        """
        parent, name = key
        if new.inode != old.inode:
            other = _name_of_inode(parent, old.inode, name)
            if other is not None and self._starts_with(parent, other, old, at):
                return Finding("rotated", new.path, old, new, rotated_to=join(parent, other))
            if self._continues_a_sibling(parent, name, new, at):
                return None
        if new.size == old.size:
            prefix = new.sha256
        else:
            got = self.hasher.prefix(new.path, old.size, at)
            prefix = got[0] if got is not None else None
        return classify(old, new, attrs, prefix)

    def _starts_with(
        self, parent: bytes, name: bytes, old: FileState, at: tuple[int, bytes] | None
    ) -> bool:
        """Whether ``parent/name`` is ``old``'s inode and begins with ``old``'s content."""
        where = (at[0], name) if at is not None else None
        got = self.hasher.prefix(join(parent, name), old.size, where)
        return got is not None and got[1].st_ino == old.inode and got[0] == old.sha256

    def _continues_a_sibling(
        self, parent: bytes, name: bytes, new: FileState, at: tuple[int, bytes] | None
    ) -> bool:
        """Whether ``new`` is the file another baseline entry of ``parent`` recorded, grown."""
        for sibling, recorded in self.baseline.children(parent).items():
            if sibling == name:
                continue
            old = FileState.from_recorded(join(parent, sibling), recorded)
            if old.type == "file" and old.inode == new.inode and old.size <= new.size:
                if old.size == new.size:
                    return old.sha256 == new.sha256
                got = self.hasher.prefix(new.path, old.size, at)
                return got is not None and got[1].st_ino == new.inode and got[0] == old.sha256
        return False

    def _orphaned(self, found: _Found, old: FileState) -> None:
        """A directory replaced by a symlink, a file or a device: what it held is gone.

        Its baseline entries are removed, as for a directory deleted: check and watch
        then say the same, and accept drops them, so that they are reported added when a
        directory comes back. The entry itself stays, with what replaced it.
        """
        if self.accepts is None or "removed" in self.accepts:
            found.findings.extend(
                Finding("removed", b.path, b, None) for b in self.baseline.below(old.path)
            )
        if self.writes and self.accepts is None:
            found.deletes.extend(join(old.path, n) for n in self.baseline.children(old.path))

    def _removed(self, found: _Found, scope: int, old: FileState) -> None:
        root = self.job.scopes[scope].root.path
        excluded = old.path in self.job.skip or self.excluders[scope].excludes(
            relative(root, old.path)
        )
        reported = self.accepts is None or "removed" in self.accepts
        if not excluded and not self.initialises and reported:
            found.findings.append(Finding("removed", old.path, old, None))
            if old.type == "dir":
                found.findings.extend(
                    Finding("removed", b.path, b, None) for b in self.baseline.below(old.path)
                )
        if self.writes and self.accepts is None:
            found.deletes.append(old.path)


def _grew_or_moved(old: FileState, new: FileState) -> bool:
    """A regular file, read, that is not exactly as recorded: ``grow`` has a question."""
    return (
        old.type == new.type == "file"
        and new.error_type is None
        and (old.size != new.size or old.sha256 != new.sha256 or old.inode != new.inode)
    )


def _with_unseen_trusted(state: FileState, recorded: tuple[object, ...]) -> FileState:
    """``state`` with the recorded ``trusted.*`` xattrs this process cannot see."""
    carried = carry_trusted(cast("str | None", recorded[_XATTRS]), state.xattrs)
    return state if carried == state.xattrs else state._replace(xattrs=carried)


class _DeepDirs:
    """Open directories for paths too long to open whole (walk.open_directory), by path.

    A verify batch's files are opened relative to them; a ``with`` block closes them.
    """

    def __init__(self) -> None:
        self._fds: dict[bytes, int | OSError] = {}

    def at(self, parent: bytes, name: bytes) -> tuple[int, bytes]:
        """(directory fd, name) for the file; raises what opening the directory raised."""
        if parent not in self._fds:
            try:
                self._fds[parent] = open_directory(parent)
            except OSError as e:
                self._fds[parent] = e
        fd = self._fds[parent]
        if isinstance(fd, OSError):
            raise fd
        return fd, name

    def __enter__(self) -> _DeepDirs:
        return self

    def __exit__(self, *_exc: object) -> None:
        for fd in self._fds.values():
            if not isinstance(fd, OSError):
                os.close(fd)
        self._fds.clear()


def _unopened(path: bytes, e: OSError) -> FileState:
    """The state of a file whose directory could not be opened: missing, or unreadable."""
    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
        return missing(path)
    return failed(path, error_type(e), describe(e))


def _inode(recorded: FileState | None) -> int:
    """The recorded inode number, where there is one (0 for a path new to the baseline)."""
    return recorded.inode if recorded is not None else 0


def _read_file(state: FileState) -> bool:
    return state.type == "file" and state.error_type is None


def _name_of_inode(directory: bytes, inode: int, besides: bytes) -> bytes | None:
    """A name in ``directory`` (not ``besides``) whose entry is inode ``inode``, if any.

    From the directory's own listing (getdents gives each entry's inode: no stat).
    """
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                name = os.fsencode(entry.name)
                if entry.inode() == inode and name != besides:
                    return name
    except OSError:
        return None
    return None


def lost_report(task: Task, reason: str) -> TaskResult:
    """What to report for a task that no worker could finish: its paths are unverifiable."""
    if isinstance(task, DirTask):
        lost: list[tuple[bytes, ErrorType, str]] = [
            (path, "worker_died", reason) for path in task.paths
        ]
        return TaskResult(0, 0, [], [], [], lost, [], [], scope=task.scope)
    findings = [
        Finding("unreadable", p, None, failed(p, "worker_died", reason)) for p in task.paths
    ]
    return TaskResult(0, 0, findings, [], [], [], [], [], scope=task.scope)


_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}  # syscall numbers; the stdlib has no wrapper
_IOPRIO_IDLE = 3 << 13  # IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT


def _be_idle() -> None:
    """Lowest CPU priority and the idle I/O class: read only when the disk has nothing else.

    Either may be refused (a seccomp filter such as systemd's SystemCallFilter=~@resources
    blocks nice()): that is a warning, and the worker goes on at the priority it has.
    """
    try:
        os.nice(19)
    except OSError as e:
        log.warning(
            "idle_priority_unavailable",
            message=f"could not lower the CPU priority: {e.strerror}",
        )
    number = _IOPRIO_SET.get(os.uname().machine)
    import ctypes  # noqa: PLC0415 - only for --idle

    libc = ctypes.CDLL(None, use_errno=True)
    if number is None or libc.syscall(number, 1, 0, _IOPRIO_IDLE) != 0:  # IOPRIO_WHO_PROCESS, self
        log.warning("idle_io_unavailable", message="could not set the idle I/O class")


def _device(path: bytes) -> int | None:
    try:
        return os.lstat(path).st_dev
    except OSError:
        return None


def worker_main(  # noqa: PLR0917 - a Process passes its args by position
    conn: Connection,
    hungry: Hunger | None,
    job: Job,
    chunk_size: int,
    pace: Pace | None,
    idle: bool,
) -> None:
    """Hash worker process: take tasks until the None sentinel or until main is gone."""
    name_process("integrityd-hash")
    ignore_stop_signals()  # main stops us with the None sentinel, or with SIGKILL
    logsetup.configure(job.log)
    if idle:
        _be_idle()

    def emit(spawned: list[Task], part: TaskResult) -> None:
        # A part of the task's result: 4 items, where the whole result has 3.
        conn.send((spawned, 0, pickle.dumps(part, pickle.HIGHEST_PROTOCOL), False))

    scanner: Scanner | None = None
    try:
        scanner = Scanner(job, chunk_size, pace, hungry=hungry, emit=emit)
        while (task := conn.recv()) is not None:
            if isinstance(task, Job):  # the daemon reloaded its config; no reply expected
                logsetup.configure(task.log)
                log.debug("reconfigured", process="worker", pid=os.getpid())
                scanner.close()
                scanner = Scanner(task, chunk_size, pace, hungry=hungry, emit=emit)
                continue
            spawned, report, walked = scanner.run(task)
            conn.send((spawned, walked, pickle.dumps(report, pickle.HIGHEST_PROTOCOL)))
    except (EOFError, ConnectionError):
        pass  # the main process is gone (EOF, EPIPE, ECONNRESET): nobody wants our results
    except (sqlite3.Error, IntegritydError) as e:
        # A damaged manifest page, say: main ends the run with its exit code, in one line
        # (a traceback per worker said nothing more, and the run went on without them).
        err = sqlite_error(job.manifest, e) if isinstance(e, sqlite3.Error) else e
        with contextlib.suppress(OSError):
            conn.send(Failed(type(err).__name__, str(err), err.exit_code))
    finally:
        if scanner is not None:
            scanner.close()
