"""Messages that cross process boundaries, and the findings a run reports.

Everything here must pickle: a failure travels as data (``FileState.error``), never as
an exception. ``FileState`` is a NamedTuple rather than a dataclass on purpose: it is
created, pickled and unpickled once per file, and a tuple is both the cheapest thing to
pickle and directly usable as SQLite statement parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, cast

from integrityd.config import LogConfig, RootConfig
from integrityd.keys import PublicKey, SigningKey
from integrityd.policy import POLICIES, Command, Policy

if TYPE_CHECKING:
    from integrityd.seal import Trusted  # seal.py reads RECORDED from here

Action = Literal[
    "added", "removed", "modified", "backdated", "metadata", "corrupted", "unreadable",
    "restored", "grown", "rotated",
]  # fmt: skip
"""A finding's ``event.action``: the README's table of events says what each means."""

ErrorType = Literal["permission", "io", "os", "changing", "worker_died"]
"""Why a file or directory could not be verified: ``error.type`` in the events."""

# Hints the walker gives the hash workers, from the directory entry's type.
HINT_FILE = "f"
HINT_OTHER = "o"
"""Directories, symlinks and special files: the worker only lstat()s them, never opens them."""


RECORDED = (
    "type",
    "size",
    "mtime_ns",
    "ctime_ns",
    "inode",
    "mode",
    "uid",
    "gid",
    "sha256",
    "target",
    "nlink",
    "rdev",
    "flags",
    "caps",
    "acl",
    "selinux",
    "xattrs",
)
"""What the manifest records of a file, in the order of its columns: the one definition.

The manifest's column list is made from it, what a check compares is ``recorded()``,
and a baseline entry is read back with ``from_recorded``; tests/test_layout.py fails if
the manifest's table ever disagrees.
"""


class FileState(NamedTuple):
    """What one file looks like now (or in the baseline).

    Its path, the RECORDED fields, and why it could not be verified, if it could not.
    """

    path: bytes
    type: str  # file, dir, symlink, fifo, socket, char, block; "missing" if it vanished
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    mode: int  # permission bits, including setuid/setgid/sticky
    uid: int
    gid: int
    sha256: bytes | None
    target: bytes | None  # a symlink's target
    # None in a baseline: not recorded (an older manifest, or a root whose check leaves
    # them out), and never compared. See attributes.py for what each holds.
    nlink: int | None = None
    rdev: int | None = None  # st_rdev of a char or block device, else 0
    flags: int | None = None  # inode flags (attributes.FLAG_MASK); -1: not supported
    caps: bytes | None = None
    acl: str | None = None
    selinux: str | None = None
    xattrs: str | None = None
    error_type: ErrorType | None = None  # why it could not be verified
    error: str | None = None

    def recorded(self) -> tuple[object, ...]:
        """The RECORDED fields, in that order: what the manifest stores and a check compares."""
        return cast("tuple[object, ...]", self[_RECORDED])

    @classmethod
    def from_recorded(cls, path: bytes, values: Sequence[object]) -> FileState:
        """The state a baseline entry records: ``values`` in RECORDED order."""
        return cls(path, *values)  # type: ignore[arg-type]


# The one place where the layout meets positions (a slice, for speed: recorded() runs
# for every file a check compares). Checked here, at import, so that no edit of the
# fields above can leave the two apart.
_RECORDED = slice(1, 1 + len(RECORDED))
if list(FileState._fields)[_RECORDED] != list(RECORDED):
    raise AssertionError(f"FileState fields {FileState._fields} do not begin with {RECORDED}")


@dataclass(frozen=True, slots=True)
class Scope:
    """A subtree to scan: ``start`` lies inside ``root.path`` (often it is the root itself)."""

    root: RootConfig
    start: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """What the collector is asked to do for one init/check/accept run."""

    command: Command
    manifest: bytes
    scopes: tuple[Scope, ...]
    skip: frozenset[bytes]  # the manifest and its journals: never reported
    json: bool
    progress: bool
    log: LogConfig = field(default_factory=LogConfig)
    max_rate: int | None = None  # bytes/s read by all workers together
    idle: bool = False  # idle I/O class and lowest CPU priority for the workers
    io_depth: int = 0  # threads per worker reading ahead (prefetch.py); 0: none
    # The seal (seal.py): readers check with verify_key; writers sign with sign_key.
    verify_key: PublicKey | None = None
    sign_key: SigningKey | None = None
    min_seq: int = 0  # refuse a baseline whose change log is older (a rollback)
    trusted: Trusted | None = None  # what the collector checked of the seal (Ready)
    argv: tuple[str, ...] = ()  # the command line, for the change log
    max_findings: int | None = None  # findings in the report (0: the summary alone)
    packages: str | None = None  # dpkg's admin directory, to look findings up in (packages.py)

    @property
    def policy(self) -> Policy:
        """What this job's command does: its row of policy.POLICIES."""
        return POLICIES[self.command]


@dataclass(frozen=True, slots=True)
class DirTask:
    """List these directories, hash what they hold and compare it with the baseline."""

    paths: tuple[bytes, ...]
    scope: int  # index into Job.scopes
    recursive: bool = True  # False: the directories' own entries only (the daemon's re-checks)


@dataclass(frozen=True, slots=True)
class FileTask:
    """Hash and compare these paths (large files, parts of huge directories, scope starts)."""

    paths: tuple[bytes, ...]
    scope: int


Task = DirTask | FileTask


@dataclass(frozen=True, slots=True)
class NewCycle:
    """verify: a root's files were all verified in its cycle; a new one begins at ``ns``."""

    root: bytes
    ns: int


@dataclass(frozen=True, slots=True)
class Ping:
    """watch: main asks the collector to answer with ``LiveStats`` (proof it keeps up)."""


@dataclass(frozen=True, slots=True)
class LiveStats:
    """watch: the collector's running totals, for the service's status line."""

    files: int
    findings: int
    # By scope (Job.scopes' index): entries checked and bytes hashed since the start
    per_scope: tuple[tuple[int, int, int], ...] = ()  # (scope, files, bytes)


@dataclass(frozen=True, slots=True)
class Finish:
    """The walk is over and every result has been delivered."""


@dataclass(frozen=True, slots=True)
class Ready:
    """The collector holds the manifest (and, for writers, its lock).

    ``trusted``: what the collector checked of the seal, for the workers (seal.Trusted).
    """

    trusted: Trusted | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The collector hit a fatal error; main re-raises it under the same exit code."""

    error_type: str
    message: str
    exit_code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """Totals of a run; ``status`` holds the AIDE-compatible exit bits."""

    command: Command
    files: int
    bytes: int
    seconds: float
    counts: dict[str, int]
    unverified: int
    status: int
    verification: dict[str, float] | None = None  # verify: coverage and age of the oldest
    # Per scope (a root, or the PATH given inside one): path, files, bytes, counts,
    # unverified, status, and verify's coverage; for the JSON summary and the metrics.
    roots: tuple[dict[str, Any], ...] = ()
    signature: dict[str, object] | None = None  # seal.Info.event(): state, key, seq, digest


@dataclass(frozen=True, slots=True)
class Finding:
    """One difference between the baseline (``old``) and now (``new``)."""

    action: Action
    path: bytes
    old: FileState | None
    new: FileState | None
    changes: tuple[str, ...] = ()
    reason: str | None = None  # why, where the action alone does not say (grow: "truncated")
    rotated_to: bytes | None = None  # rotated: where the baseline's file lives on


class TaskResult(NamedTuple):
    """What one task found, for the collector: only differences, never every file."""

    files: int  # entries examined
    nbytes: int  # bytes of file content hashed
    findings: list[Finding]
    rows: list[tuple[object, ...]]  # manifest rows to write (init, accept)
    deletes: list[bytes]  # paths to drop from the baseline, with everything below them
    unreadable_dirs: list[tuple[bytes, ErrorType, str]]  # (directory, error type, message)
    verified: list[tuple[bytes, bytes]]  # verify: (parent, name) read and compared
    matched: list[bytes]  # watch: paths found as in the baseline (or absent from both)
    # time.monotonic() when the task began (0.0: unknown, older than any): every file in
    # it was read after this. The daemon's collector orders what it hears of a path by it.
    started: float = 0.0
    scope: int = -1  # the task's index into Job.scopes, for the per-root totals


class Hunger(Protocol):
    """A counter in memory shared with the workers: how many of them wait for work."""

    value: int
