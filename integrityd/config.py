"""Configuration: validated frozen dataclasses, and the parsers for their text values.

A ``Config`` is immutable and picklable, so it can be handed to worker processes.
Reading one from YAML is ``configfile``'s job, kept apart so that a command run
without a config file does not pay for importing PyYAML.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Literal

from integrityd.units import Ambiguous, minutes_or_mib, parse_duration, parse_size

ATTRIBUTES = frozenset({
    "content", "grow", "type", "mode", "uid", "gid", "target", "mtime", "ctime", "inode",
    "nlink", "rdev", "caps", "acl", "selinux", "xattrs", "flags",
})  # fmt: skip
"""What can be compared for each file. ``content`` covers the SHA-256 and the size;
``grow`` instead lets a file grow as long as what it held at baseline is unchanged."""

EXTENDED = frozenset({"caps", "acl", "selinux", "xattrs", "flags"})
"""Attributes read with system calls of their own (see attributes.py), only if checked."""

DEFAULT_CHECK: tuple[str, ...] = (
    "content", "type", "mode", "uid", "gid", "target", "rdev", "nlink",
    "caps", "acl", "selinux", "xattrs", "flags",
)  # fmt: skip
"""What an intruder changes to hide or to gain something. Left out: mtime, ctime and
inode change on harmless operations (touch, editors' rename-on-save). ``nlink`` is
compared for everything but directories, whose count changes with each subdirectory."""

LOG_LEVELS = ("debug", "info", "warning", "error")


def check_attributes(check: tuple[str, ...]) -> None:
    """Raise ValueError, saying what to write, unless ``check`` is a valid attribute list."""
    unknown = sorted(set(check) - ATTRIBUTES)
    if unknown:
        msg = f"unknown attribute {unknown[0]!r}; choose from {', '.join(sorted(ATTRIBUTES))}"
        raise ValueError(msg)
    if "grow" in check and "content" in check:
        msg = "'grow' is used instead of 'content' (a file that may only grow): name one of them"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """``roots[].rules[]``: what to compare for the paths ``match`` selects."""

    match: str  # an exclude pattern: the path or a directory above it matches
    check: tuple[str, ...]

    def __post_init__(self) -> None:
        check_attributes(self.check)
        from integrityd.exclude import problem  # noqa: PLC0415 - pathspec only where used

        if (why := problem(self.match)) is not None:
            raise ValueError(f"match {self.match!r}: {why}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RootConfig:
    """One tree to baseline; ``path`` is absolute and resolved, as bytes."""

    path: bytes
    exclude: tuple[str, ...] = ()
    check: tuple[str, ...] = DEFAULT_CHECK
    rules: tuple[Rule, ...] = ()  # the last that matches a path decides; else ``check``
    one_filesystem: bool = True
    workers: int | None = None  # at most this many files of this root read at once

    def __post_init__(self) -> None:
        check_attributes(self.check)
        if self.exclude:
            # Imported here: pathspec is not needed by runs without excludes.
            from integrityd.exclude import problem  # noqa: PLC0415

            for j, pattern in enumerate(self.exclude):
                if (why := problem(pattern)) is not None:
                    raise ValueError(f"exclude[{j}] {pattern!r}: {why}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    """Diagnostics on stderr; findings go to stdout and are not affected."""

    format: Literal["auto", "json", "console"] = "auto"
    level: str = "info"

    def __post_init__(self) -> None:
        if self.format not in ("auto", "json", "console"):
            msg = f"must be auto, json or console, got {self.format!r}"
            raise ValueError(msg)
        if self.level not in LOG_LEVELS:
            msg = f"must be one of {', '.join(LOG_LEVELS)}, got {self.level!r}"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """Prometheus metrics (metrics.py): a textfile after one-shot runs, /metrics from watch."""

    textfile: str | None = None  # node_exporter textfile written after each one-shot run
    listen: str | None = None  # HOST:PORT where watch serves /metrics; bind to localhost


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningConfig:
    """Key files for the seal (seal.py); the command line's flags override them."""

    private_key: str | None = None  # signs: init, accept, import, key change
    public_key: str | None = None  # checks: check, verify, watch, export, log
    min_seq: int = 0  # refuse a baseline older than this change (a rollback)

    def __post_init__(self) -> None:
        if self.min_seq < 0:
            msg = f"must be >= 0, got {self.min_seq}"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class PackagesConfig:
    """The package database that findings are looked up in (packages.py)."""

    # auto: dpkg where its database exists; none: no lookups
    manager: Literal["auto", "dpkg", "none"] = "auto"
    dpkg_admindir: str = "/var/lib/dpkg"  # as dpkg's --admindir

    def __post_init__(self) -> None:
        if self.manager not in ("auto", "dpkg", "none"):
            msg = f"must be auto, dpkg or none, got {self.manager!r}"
            raise ValueError(msg)

    def database(self) -> str | None:
        """The dpkg admin directory to read, or None where no lookups are made."""
        if self.manager == "none":
            return None
        if self.manager == "auto" and not os.path.exists(
            os.path.join(self.dpkg_admindir, "status")
        ):
            return None
        return self.dpkg_admindir


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchConfig:
    """The daemon's timing; see the README's config reference."""

    rescan_interval: float = 86400.0  # full re-scan, for what no event shows; 0: never
    settle: float = 1.0  # a file still open for writing is hashed this long after its last write
    # Paths held for hashing before they fold into their directories: about 370 bytes each
    # (measured), 3.7 MiB at the default.
    max_pending: int = 10_000
    # What the main process may grow by while events queue up (watchdog's queues have no
    # bound) before they are dropped and every root re-scanned: observer.py. Main rests at
    # 38 MiB and the other processes take 95-100 in a storm: 16 MiB let the summed RSS
    # reach 155 MiB in watch_bench's creation storm (measured), over its bound of 150.
    backlog_memory: int = 8 << 20

    def __post_init__(self) -> None:
        if self.rescan_interval < 0 or self.settle < 0:
            msg = "must be a duration >= 0, like 30s, 10m, 24h"
            raise ValueError(msg)
        if self.max_pending < 100:
            msg = f"must be >= 100, got {self.max_pending}"
            raise ValueError(msg)
        if self.backlog_memory < 1 << 20:
            msg = f"must be at least 1MiB, got {self.backlog_memory}"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything a run needs to know; ``workers == 0`` means one per usable CPU."""

    manifest: bytes | None = None
    roots: tuple[RootConfig, ...] = ()
    workers: int = 0
    # As fast as 1 MiB with the page-aligned buffer (64 KiB was slower), at a quarter of
    # the memory per worker: benchmarks/README.md.
    chunk_size: int = 256 << 10
    # Threads per worker that read ahead of it (prefetch.py), so that cold storage has
    # reads in flight; 0 turns them off. Measured: benchmarks/README.md (2 beat 4 once
    # the next directory was listed ahead: fewer threads to share one GIL).
    io_depth: int = 2
    report: Literal["text", "json"] = "text"
    log: LogConfig = field(default_factory=LogConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    signing: SigningConfig = field(default_factory=SigningConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    packages: PackagesConfig = field(default_factory=PackagesConfig)

    def __post_init__(self) -> None:
        if self.workers < 0:
            msg = f"must be 'auto' or >= 1, got {self.workers}"
            raise ValueError(msg)
        if not 0 <= self.io_depth <= 64:
            msg = f"must be between 0 and 64, got {self.io_depth}"
            raise ValueError(msg)
        if not (1 << 12) <= self.chunk_size <= (1 << 28):
            msg = f"must be between 4KiB and 256MiB, got {self.chunk_size}"
            raise ValueError(msg)
        if self.report not in ("text", "json"):
            msg = f"must be text or json, got {self.report!r}"
            raise ValueError(msg)

    def worker_count(self) -> int:
        """Workers to start: the configured number, or one per CPU this process may use."""
        return self.workers or len(os.sched_getaffinity(0))


@dataclass(frozen=True, slots=True)
class Budget:
    """How much one ``verify`` run may do: a duration, a size, or a fraction of the files."""

    seconds: float | None = None
    bytes: int | None = None
    fraction: tuple[int, int] | None = None  # (numerator, denominator) of the file count

    def files_for(self, total: int) -> int | None:
        """Files allowed out of ``total`` (rounded up, so k runs of 1/k cover them all)."""
        if self.fraction is None:
            return None
        n, d = self.fraction
        return -(-total * n // d)


_FRACTION = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_budget(text: str) -> Budget:
    """'90min', '1h30m', '200G', '1/7' -> Budget; ValueError with what to write otherwise."""
    if minutes_or_mib(text):
        number = text.strip()[:-1].strip()
        msg = (
            f"{text!r} could mean {number} minutes or {number} MiB: "
            f"write {number}min or {number}MiB"
        )
        raise ValueError(msg)
    if text.strip().isdigit():
        msg = f"{text!r} needs a unit: seconds (90s), minutes (90min) or a size (90GiB)"
        raise ValueError(msg)
    if m := _FRACTION.fullmatch(text):
        part, whole = int(m.group(1)), int(m.group(2))
        if 0 < part <= whole:
            return Budget(fraction=(part, whole))
        msg = f"a fraction of the files must be between 0 and 1, like 1/7, got {text!r}"
        raise ValueError(msg)
    for parse in (parse_duration, parse_size):
        try:
            value = parse(text)
        except Ambiguous:
            raise
        except ValueError:
            continue
        return Budget(seconds=value) if parse is parse_duration else Budget(bytes=int(value))
    msg = f"expected a duration (90min, 2h), a size (200GiB) or a fraction (1/7), got {text!r}"
    raise ValueError(msg)
