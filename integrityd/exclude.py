"""Exclude patterns with .gitignore habits, matched against paths relative to a root.

- A pattern without ``/`` (a trailing one aside) matches a name at any depth: ``*.swp``.
- A pattern with ``/`` is anchored at the root: ``/mtab``, ``var/cache``.
- ``**`` crosses directories: ``logs/**/*.gz``; ``*`` and ``?`` stop at ``/``.
- A trailing ``/`` matches directories only: ``cache/``.
An excluded directory is not entered, so everything below it is excluded too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence


def _translate(body: str) -> str:
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        if body.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif body.startswith("**", i):
            out.append(".*")
            i += 2
        elif body[i] == "*":
            out.append("[^/]*")
            i += 1
        elif body[i] == "?":
            out.append("[^/]")
            i += 1
        elif body[i] == "[" and (j := body.find("]", i + 2)) != -1:
            inner = body[i + 1 : j]
            if inner.startswith("!"):
                inner = "^" + inner[1:]
            out.append("[" + inner.replace("\\", "\\\\") + "]")
            i = j + 1
        else:
            out.append(re.escape(body[i]))
            i += 1
    return "".join(out)


class Excluder:
    """Decides whether a path below a root is excluded."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self._any: list[re.Pattern[bytes]] = []
        self._dirs: list[re.Pattern[bytes]] = []
        for pattern in patterns:
            dir_only = pattern.endswith("/")
            body = pattern.rstrip("/")
            if not body:
                continue
            anchored = "/" in body
            regex = _translate(body.lstrip("/"))
            if not anchored:
                regex = "(?:.*/)?" + regex
            compiled = re.compile(os.fsencode(regex), re.DOTALL)
            (self._dirs if dir_only else self._any).append(compiled)

    def __bool__(self) -> bool:
        return bool(self._any or self._dirs)

    def matches(self, rel: bytes, is_dir: bool) -> bool:
        """True if ``rel`` (relative to the root, no leading ``/``) itself matches a pattern."""
        if any(p.fullmatch(rel) for p in self._any):
            return True
        return is_dir and any(p.fullmatch(rel) for p in self._dirs)

    def excludes(self, rel: bytes, is_dir: bool = False) -> bool:
        """True if ``rel`` or any directory above it is excluded."""
        if not self:
            return False
        parts = rel.split(b"/")
        for i in range(1, len(parts)):
            if self.matches(b"/".join(parts[:i]), is_dir=True):
                return True
        return self.matches(rel, is_dir)
