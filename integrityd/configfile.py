"""Reading a YAML config file into a validated ``Config``.

Every error names the file, the line and the key (``roots[1].exclude``), because a
config is usually edited by hand on a server, far from the person who wrote it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import yaml

from integrityd.config import (
    Config,
    LogConfig,
    MetricsConfig,
    PackagesConfig,
    RootConfig,
    Rule,
    SigningConfig,
    WatchConfig,
)
from integrityd.errors import ConfigError
from integrityd.exclude import problem
from integrityd.metrics import parse_listen
from integrityd.paths import covers, resolved_keeping_name
from integrityd.units import parse_duration, parse_size
from integrityd.writers import refuse_if_changeable


def load(path: str, *, roots_exist: bool = False) -> Config:
    """Read and validate a YAML config file; every mistake in it, not just the first.

    ``roots_exist``: also require each root to exist (``config check``: will this work
    now?). A daemon's reload does not ask, as a root may be mounted later.
    """
    # It names the manifest, the public key and the roots.
    harm = "they could point integrityd at a manifest or key of their own"
    refuse_if_changeable(path, "config", harm, ConfigError)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_BYTES + 1)
    except (OSError, UnicodeDecodeError) as e:
        msg = f"cannot read config {path}: {e}"
        raise ConfigError(msg) from e
    if len(text) > MAX_BYTES:
        msg = f"{path}: larger than {MAX_BYTES // 1024} KiB; a config this size is a mistake"
        raise ConfigError(msg)
    try:
        _check_depth(text, path)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        problem = getattr(e, "problem", None) or str(e)
        msg = f"{where}: invalid YAML: {problem}"
        raise ConfigError(msg) from e
    if node is None:
        return Config()
    builder = _Builder(path, roots_exist=roots_exist)
    try:
        cfg = builder.config(node)
    except _Noted:
        pass
    except ConfigError as e:
        builder.problems.append((getattr(e, "line", 0), str(e)))
    if builder.problems:
        ordered = sorted(builder.problems, key=lambda p: p[0])
        raise ConfigError.of([message for _, message in ordered], path)
    return cfg


MAX_BYTES = 1 << 20
MAX_DEPTH = 32
"""A real config nests five deep; PyYAML's composer recurses once per level, and 5,000
levels of lists ended in a RecursionError instead of a line number."""


def _check_depth(text: str, path: str) -> None:
    """Refuse YAML nested deeper than MAX_DEPTH, at the line where it gets too deep.

    yaml.parse yields events from a state machine, without recursion, so it can look
    at any depth before the composer would recurse into it.
    """
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else 0
                msg = f"{path}:{line}: nested more than {MAX_DEPTH} levels deep"
                raise ConfigError(msg)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


class _At(ConfigError):
    """A mistake at one line of the file (0: of the file as a whole)."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


class _Builder:
    """Turns a composed YAML node tree into a Config, keeping marks for error messages."""

    def __init__(self, path: str, *, roots_exist: bool = False) -> None:
        self.path = path
        self.roots_exist = roots_exist
        self.problems: list[tuple[int, str]] = []  # every mistake found: (line, message)

    @contextlib.contextmanager
    def each(self) -> Iterator[None]:
        """Note a mistake in one key and go on with the next, so that all are reported."""
        try:
            yield
        except _Noted:
            pass
        except ConfigError as e:
            self.problems.append((getattr(e, "line", 0), str(e)))

    def error(self, node: yaml.Node, key: str, message: str) -> ConfigError:
        line = node.start_mark.line + 1
        return _At(f"{self.path}:{line}: {key}: {message}", line)

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

    def abspath(self, node: yaml.Node, key: str, keep_name: bool = False) -> bytes:
        value = self.typed(node, key, str, "a path")
        if not os.path.isabs(os.path.expanduser(value)):
            raise self.error(node, key, f"must be an absolute path, got {value!r}")
        if keep_name:  # the manifest: a symlink at its name is refused, not followed
            return resolved_keeping_name(value)
        return os.fsencode(os.path.realpath(os.path.expanduser(value)))

    def size(self, node: yaml.Node, key: str) -> int:
        value = self.scalar(node, key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return parse_size(str(value))
        except ValueError as e:
            raise self.error(node, key, str(e)) from e

    def config(self, node: yaml.Node) -> Config:
        allowed = {f.name for f in fields(Config)}
        m = self.mapping(node, "", allowed)
        values: dict[str, Any] = {}
        if "manifest" in m:
            with self.each():
                values["manifest"] = self.abspath(m["manifest"], "manifest", keep_name=True)
        if "roots" in m:
            with self.each():
                values["roots"] = self.roots(m["roots"])
        if "workers" in m:
            with self.each():
                w = self.scalar(m["workers"], "workers")
                if w != "auto" and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
                    raise self.error(
                        m["workers"], "workers", f"expected 'auto' or a number >= 1, got {w!r}"
                    )
                values["workers"] = 0 if w == "auto" else w
        if "chunk_size" in m:
            with self.each():
                size = self.size(m["chunk_size"], "chunk_size")
                values["chunk_size"] = self.valid(m["chunk_size"], "chunk_size", size)
        if "io_depth" in m:
            with self.each():
                depth = self.typed(m["io_depth"], "io_depth", int, "a number from 0 to 64")
                values["io_depth"] = self.valid(m["io_depth"], "io_depth", depth)
        if "report" in m:
            with self.each():
                report = self.typed(m["report"], "report", str, "text or json")
                values["report"] = self.valid(m["report"], "report", report)
        sections = {
            "log": self.log, "watch": self.watch, "signing": self.signing, "metrics": self.metrics,
            "packages": self.packages,
        }  # fmt: skip
        for key, build in sections.items():
            if key in m:
                with self.each():
                    values[key] = build(m[key])
        return Config(**values)

    def file_path(self, node: yaml.Node, key: str) -> str:
        """An absolute path of a file (``~`` expanded), kept as text: a key, a textfile."""
        path: str = os.path.expanduser(self.typed(node, key, str, "a path"))
        if not os.path.isabs(path):
            raise self.error(node, key, f"must be an absolute path, got {path!r}")
        return path

    def metrics(self, node: yaml.Node) -> MetricsConfig:
        m = self.mapping(node, "metrics", {"textfile", "listen"})
        values: dict[str, Any] = {}
        if "textfile" in m:
            with self.each():
                values["textfile"] = self.file_path(m["textfile"], "metrics.textfile")
        if "listen" in m:
            with self.each():
                listen = self.typed(m["listen"], "metrics.listen", str, "HOST:PORT")
                try:
                    parse_listen(listen)
                except ValueError as e:
                    raise self.error(m["listen"], "metrics.listen", str(e)) from e
                values["listen"] = listen
        return MetricsConfig(**values)

    def packages(self, node: yaml.Node) -> PackagesConfig:
        m = self.mapping(node, "packages", {"manager", "dpkg_admindir"})
        values: dict[str, Any] = {}
        if "manager" in m:
            with self.each():
                manager = self.typed(m["manager"], "packages.manager", str, "auto, dpkg or none")
                try:
                    values["manager"] = PackagesConfig(manager=manager).manager
                except ValueError as e:
                    raise self.error(m["manager"], "packages.manager", str(e)) from e
        if "dpkg_admindir" in m:
            with self.each():
                values["dpkg_admindir"] = self.file_path(
                    m["dpkg_admindir"], "packages.dpkg_admindir"
                )
        return PackagesConfig(**values)

    def signing(self, node: yaml.Node) -> SigningConfig:
        m = self.mapping(node, "signing", {"private_key", "public_key", "min_seq"})
        values: dict[str, Any] = {}
        for name in ("private_key", "public_key"):
            if name in m:
                with self.each():
                    values[name] = self.file_path(m[name], f"signing.{name}")
        if "min_seq" in m:
            with self.each():
                seq = self.typed(m["min_seq"], "signing.min_seq", int, "a number >= 0")
                if seq < 0:
                    raise self.error(m["min_seq"], "signing.min_seq", f"must be >= 0, got {seq}")
                values["min_seq"] = seq
        return SigningConfig(**values)

    def valid(self, node: yaml.Node, key: str, value: Any) -> Any:  # noqa: ANN401
        """``value`` if Config accepts it for ``key``; otherwise the error, at ``node``."""
        try:
            Config(**{key: value})
        except ValueError as e:
            raise self.error(node, key, str(e)) from e
        return value

    def log(self, node: yaml.Node) -> LogConfig:
        lm = self.mapping(node, "log", {"format", "level"})
        lv = {k: self.typed(v, f"log.{k}", str, "a string") for k, v in lm.items()}
        try:
            return LogConfig(**lv)
        except ValueError as e:
            bad = "format" if "auto, json" in str(e) else "level"
            raise self.error(lm[bad], f"log.{bad}", str(e)) from e

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
        if "backlog_memory" in m:
            values["backlog_memory"] = self.size(m["backlog_memory"], "watch.backlog_memory")
        for name in ("max_pending", "backlog_memory"):  # each checked alone: the key at fault
            if name in values:
                try:
                    WatchConfig(**{name: values[name]})
                except ValueError as e:
                    raise self.error(m[name], f"watch.{name}", str(e)) from e
        return WatchConfig(**values)

    def roots(self, node: yaml.Node) -> tuple[RootConfig, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, "roots", "expected a list of roots (each with a 'path')")
        out: list[tuple[RootConfig, yaml.Node, str]] = []
        for i, rnode in enumerate(node.value):
            with self.each():
                root, pnode = self.root(rnode, f"roots[{i}]")
                out.append((root, pnode, f"roots[{i}]"))
        self.overlaps(out)
        return tuple(root for root, _, _ in out)

    def root(self, rnode: yaml.Node, key: str) -> tuple[RootConfig, yaml.Node]:
        """One root, every key of it checked; raises the last of its mistakes, if any."""
        allowed = {f.name for f in fields(RootConfig)}
        m = self.mapping(rnode, key, allowed)
        if "path" not in m:
            raise self.error(rnode, key, "missing required key 'path'")
        before = len(self.problems)
        values: dict[str, Any] = {}
        with self.each():
            values["path"] = self.abspath(m["path"], f"{key}.path")
            if self.roots_exist and not os.path.lexists(values["path"]):
                raise self.error(
                    m["path"], f"{key}.path", f"{os.fsdecode(values['path'])} does not exist"
                )
        for name in ("exclude", "check"):
            if name in m:
                with self.each():
                    values[name] = self.strings(m[name], f"{key}.{name}")
        for j, pattern in enumerate(values.get("exclude", ())):
            if (why := problem(pattern)) is not None:
                with self.each():
                    raise self.error(m["exclude"].value[j], f"{key}.exclude[{j}]", why)
        if "workers" in m:
            with self.each():
                w = self.scalar(m["workers"], f"{key}.workers")
                if not isinstance(w, int) or isinstance(w, bool) or w < 1:
                    raise self.error(
                        m["workers"], f"{key}.workers", f"expected a number >= 1, got {w!r}"
                    )
                values["workers"] = w
        if "one_filesystem" in m:
            with self.each():
                values["one_filesystem"] = self.typed(
                    m["one_filesystem"], f"{key}.one_filesystem", bool, "true or false"
                )
        self.comparisons(m, values, key)
        if len(self.problems) > before:
            raise _Noted(key)  # each mistake is in self.problems already
        return RootConfig(**values), m["path"]

    def comparisons(self, m: dict[str, yaml.Node], values: dict[str, Any], key: str) -> None:
        """A root's ``check`` (read already, into ``values``) and ``rules``, validated."""
        if "check" in values:
            with self.each():
                try:
                    RootConfig(path=b"/", check=values["check"])
                except ValueError as e:
                    raise self.error(m["check"], f"{key}.check", str(e)) from e
        if "rules" in m:
            with self.each():
                values["rules"] = self.rules(m["rules"], f"{key}.rules")

    def rules(self, node: yaml.Node, key: str) -> tuple[Rule, ...]:
        """``roots[i].rules``: a list of {match: PATTERN, check: [ATTRIBUTES]}."""
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, key, "expected a list of {match: PATTERN, check: [...]}")
        out = []
        for j, rnode in enumerate(node.value):
            rkey = f"{key}[{j}]"
            with self.each():
                m = self.mapping(rnode, rkey, {"match", "check"})
                for need in ("match", "check"):
                    if need not in m:
                        raise self.error(rnode, rkey, f"missing required key {need!r}")
                match = self.typed(m["match"], f"{rkey}.match", str, "a pattern")
                check = self.strings(m["check"], f"{rkey}.check")
                if (why := problem(match)) is not None:
                    raise self.error(m["match"], f"{rkey}.match", why)
                try:
                    out.append(Rule(match=match, check=check))
                except ValueError as e:
                    raise self.error(m["check"], f"{rkey}.check", str(e)) from e
        return tuple(out)

    def overlaps(self, roots: list[tuple[RootConfig, yaml.Node, str]]) -> None:
        """Refuse a root inside another, or twice the same root.

        One baseline entry belongs to one root: under an outer root, an inner one's
        entries would be compared (and, by accept, replaced or deleted) by both, with
        different rules, and which won would depend on the order of the walk.
        """
        for i, (inner, node, key) in enumerate(roots):
            for j, (outer, onode, okey) in enumerate(roots):
                if i == j or not covers(outer.path, inner.path):
                    continue
                where = f"{okey}, line {onode.start_mark.line + 1}"
                name = os.fsdecode(inner.path)
                if inner.path == outer.path and j < i:
                    with self.each():
                        raise self.error(node, f"{key}.path", f"{name} is also {where}")
                elif inner.path != outer.path:
                    with self.each():
                        raise self.error(
                            node,
                            f"{key}.path",
                            f"{name} lies inside {os.fsdecode(outer.path)} ({where}); a "
                            f"file belongs to one root: exclude it from {okey} to leave it out",
                        )


class _Noted(ConfigError):
    """A mistake already recorded in ``_Builder.problems``: nothing more to say."""
