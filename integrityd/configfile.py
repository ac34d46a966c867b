"""Reading a YAML config file into a validated ``Config``.

Every error names the file, the line and the key (``roots[1].exclude``), because a
config is usually edited by hand on a server, far from the person who wrote it.
"""

from __future__ import annotations

import os
import re
from dataclasses import fields
from typing import Any

import yaml

from integrityd.config import Config, LogConfig, RootConfig, WatchConfig, parse_duration
from integrityd.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


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
