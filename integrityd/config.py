"""Configuration: YAML in, validated frozen dataclasses out.

Every error names the file, the line and the key (``roots[1].exclude``), because a
config is usually edited by hand on a server, far from the person who wrote it.
A ``Config`` is immutable and picklable, so it can be handed to worker processes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import yaml

from integrityd.errors import ConfigError

ATTRIBUTES = frozenset(
    {"content", "type", "mode", "uid", "gid", "target", "mtime", "ctime", "inode"}
)
"""What can be compared for each file. ``content`` covers the SHA-256 and the size."""

DEFAULT_CHECK: tuple[str, ...] = ("content", "type", "mode", "uid", "gid", "target")
"""mtime, ctime and inode change on harmless operations (touch, editors' rename-on-save)."""

LOG_LEVELS = ("debug", "info", "warning", "error")
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True, slots=True, kw_only=True)
class RootConfig:
    """One tree to baseline; ``path`` is absolute and resolved, as bytes."""

    path: bytes
    exclude: tuple[str, ...] = ()
    check: tuple[str, ...] = DEFAULT_CHECK
    one_filesystem: bool = True
    workers: int | None = None  # at most this many files of this root read at once

    def __post_init__(self) -> None:
        unknown = sorted(set(self.check) - ATTRIBUTES)
        if unknown:
            msg = f"unknown attribute {unknown[0]!r}; choose from {', '.join(sorted(ATTRIBUTES))}"
            raise ValueError(msg)


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
class WatchConfig:
    """The daemon's timing; see the README's config reference."""

    rescan_interval: float = 86400.0  # full re-scan, for what no event shows; 0: never
    settle: float = 1.0  # a file still open for writing is hashed this long after its last write
    max_pending: int = 100_000  # paths held for hashing before they fold into their directories

    def __post_init__(self) -> None:
        if self.rescan_interval < 0 or self.settle < 0:
            msg = "must be a duration >= 0, like 30s, 10m, 24h"
            raise ValueError(msg)
        if self.max_pending < 100:
            msg = f"must be >= 100, got {self.max_pending}"
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
    report: Literal["text", "json"] = "text"
    log: LogConfig = field(default_factory=LogConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)

    def __post_init__(self) -> None:
        if self.workers < 0:
            msg = f"must be 'auto' or >= 1, got {self.workers}"
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


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$", re.IGNORECASE)
_FRACTION = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_BUDGET_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT])(?:i?B)?\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """'90s', '10m', '24h', '7d' -> seconds; ValueError otherwise."""
    if m := _DURATION.match(text):
        return float(m.group(1)) * _SECONDS[m.group(2).lower()]
    msg = f"expected a duration like 500ms, 30s, 10m, 24h or 7d, got {text!r}"
    raise ValueError(msg)


def parse_budget(text: str) -> Budget:
    """'90m', '1h', '200G', '1/7' -> Budget; ValueError with a readable message otherwise."""
    if m := _DURATION.match(text):
        return Budget(seconds=float(m.group(1)) * _SECONDS[m.group(2).lower()])
    if m := _FRACTION.match(text):
        n, d = int(m.group(1)), int(m.group(2))
        if 0 < n <= d:
            return Budget(fraction=(n, d))
    if m := _BUDGET_SIZE.match(text):
        return Budget(bytes=int(m.group(1)) << (10 * "KMGT".index(m.group(2).upper()) + 10))
    msg = f"expected a duration (90m, 2h), a size (200G) or a fraction (1/7), got {text!r}"
    raise ValueError(msg)


def load(path: str) -> Config:
    """Read and validate a YAML config file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        msg = f"cannot read config {path}: {e}"
        raise ConfigError(msg) from e
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        problem = getattr(e, "problem", None) or str(e)
        msg = f"{where}: invalid YAML: {problem}"
        raise ConfigError(msg) from e
    if node is None:
        return Config()
    return _Builder(path).config(node)


class _Builder:
    """Turns a composed YAML node tree into a Config, keeping marks for error messages."""

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, node: yaml.Node, key: str, message: str) -> ConfigError:
        line = node.start_mark.line + 1
        return ConfigError(f"{self.path}:{line}: {key}: {message}")

    def scalar(self, node: yaml.Node, key: str) -> Any:  # noqa: ANN401 - YAML scalars are dynamic
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, key, "expected a single value, got a list or mapping")
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            raise self.error(node, key, str(e)) from e
        finally:
            loader.dispose()

    def mapping(self, node: yaml.Node, key: str, allowed: set[str]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, key, "expected a mapping of keys to values")
        out: dict[str, yaml.Node] = {}
        for knode, vnode in node.value:
            name = self.scalar(knode, key or "key")
            full = f"{key}.{name}" if key else str(name)
            if name not in allowed:
                raise self.error(
                    knode, full, f"unknown key; expected one of {', '.join(sorted(allowed))}"
                )
            if name in out:
                raise self.error(knode, full, "duplicate key")
            out[name] = vnode
        return out

    def typed(self, node: yaml.Node, key: str, kind: type, what: str) -> Any:  # noqa: ANN401
        value = self.scalar(node, key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(node, key, f"expected {what}, got {value!r}")
        return value

    def strings(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, key, "expected a list of strings")
        return tuple(
            self.typed(n, f"{key}[{i}]", str, "a string") for i, n in enumerate(node.value)
        )

    def abspath(self, node: yaml.Node, key: str) -> bytes:
        value = self.typed(node, key, str, "a path")
        if not os.path.isabs(os.path.expanduser(value)):
            raise self.error(node, key, f"must be an absolute path, got {value!r}")
        return os.fsencode(os.path.realpath(os.path.expanduser(value)))

    def size(self, node: yaml.Node, key: str) -> int:
        value = self.scalar(node, key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        m = _SIZE.match(str(value))
        if not m:
            raise self.error(
                node, key, f"expected a size like 1048576, 256KiB or 1MiB, got {value!r}"
            )
        unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
        return int(m.group(1)) * _UNITS[unit]

    def config(self, node: yaml.Node) -> Config:
        allowed = {f.name for f in fields(Config)}
        m = self.mapping(node, "", allowed)
        values: dict[str, Any] = {}
        if "manifest" in m:
            values["manifest"] = self.abspath(m["manifest"], "manifest")
        if "roots" in m:
            values["roots"] = self.roots(m["roots"])
        if "workers" in m:
            w = self.scalar(m["workers"], "workers")
            if w != "auto" and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
                raise self.error(
                    m["workers"], "workers", f"expected 'auto' or a number >= 1, got {w!r}"
                )
            values["workers"] = 0 if w == "auto" else w
        if "chunk_size" in m:
            values["chunk_size"] = self.size(m["chunk_size"], "chunk_size")
        if "report" in m:
            values["report"] = self.typed(m["report"], "report", str, "text or json")
        if "log" in m:
            lm = self.mapping(m["log"], "log", {"format", "level"})
            lv = {k: self.typed(v, f"log.{k}", str, "a string") for k, v in lm.items()}
            try:
                values["log"] = LogConfig(**lv)
            except ValueError as e:
                bad = "format" if "auto, json" in str(e) else "level"
                raise self.error(lm[bad], f"log.{bad}", str(e)) from e
        if "watch" in m:
            values["watch"] = self.watch(m["watch"])
        try:
            return Config(**values)
        except ValueError as e:
            bad = "workers" if "auto" in str(e) else "chunk_size" if "KiB" in str(e) else "report"
            raise self.error(m[bad], bad, str(e)) from e

    def duration(self, node: yaml.Node, key: str) -> float:
        value = self.scalar(node, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)  # plain seconds
        try:
            return parse_duration(str(value))
        except ValueError as e:
            raise self.error(node, key, str(e)) from e

    def watch(self, node: yaml.Node) -> WatchConfig:
        allowed = {f.name for f in fields(WatchConfig)}
        m = self.mapping(node, "watch", allowed)
        values: dict[str, Any] = {}
        for name in ("rescan_interval", "settle"):
            if name in m:
                values[name] = self.duration(m[name], f"watch.{name}")
        if "max_pending" in m:
            values["max_pending"] = self.typed(
                m["max_pending"], "watch.max_pending", int, "a number"
            )
        try:
            return WatchConfig(**values)
        except ValueError as e:
            raise self.error(m["max_pending"], "watch.max_pending", str(e)) from e

    def roots(self, node: yaml.Node) -> tuple[RootConfig, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, "roots", "expected a list of roots (each with a 'path')")
        out = []
        allowed = {f.name for f in fields(RootConfig)}
        for i, rnode in enumerate(node.value):
            key = f"roots[{i}]"
            m = self.mapping(rnode, key, allowed)
            if "path" not in m:
                raise self.error(rnode, key, "missing required key 'path'")
            values: dict[str, Any] = {"path": self.abspath(m["path"], f"{key}.path")}
            for name in ("exclude", "check"):
                if name in m:
                    values[name] = self.strings(m[name], f"{key}.{name}")
            if "workers" in m:
                w = self.scalar(m["workers"], f"{key}.workers")
                if not isinstance(w, int) or isinstance(w, bool) or w < 1:
                    raise self.error(
                        m["workers"], f"{key}.workers", f"expected a number >= 1, got {w!r}"
                    )
                values["workers"] = w
            if "one_filesystem" in m:
                values["one_filesystem"] = self.typed(
                    m["one_filesystem"], f"{key}.one_filesystem", bool, "true or false"
                )
            try:
                out.append(RootConfig(**values))
            except ValueError as e:
                raise self.error(m["check"], f"{key}.check", str(e)) from e
        return tuple(out)
