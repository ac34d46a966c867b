"""Which attributes a path is compared on: ``roots[].rules``, the last match winning.

A rule's ``match`` is an exclude pattern (git's rules) and applies to the paths it
matches and to everything below a directory it matches, so ``var/log/`` covers the
logs in it. Of the rules that apply, the last one in the list decides; a path no rule
applies to is compared on the root's ``check``.

Directories are walked one at a time, so what the directory and its ancestors match is
worked out once per directory (``inherited``); each entry then only asks the rules
after that one. A root without rules costs nothing per file.
"""

from __future__ import annotations

from integrityd.config import RootConfig
from integrityd.exclude import Excluder

NONE = -1
"""``inherited`` when no rule applies to a directory."""


class Rules:
    """One root's rules, ready to match."""

    def __init__(self, root: RootConfig) -> None:
        self.default = frozenset(root.check)
        self._rules = [(Excluder([r.match]), frozenset(r.check)) for r in root.rules]
        self.every = self.default.union(*(c for _, c in self._rules))
        """Every attribute some path of the root is compared on."""

    def __bool__(self) -> bool:
        return bool(self._rules)

    def inherited(self, rel_dir: bytes) -> int:
        """The last rule that applies to directory ``rel_dir`` (relative to the root)."""
        return max(
            (i for i, (match, _) in enumerate(self._rules) if match.excludes(rel_dir, True)),
            default=NONE,
        )

    def attrs(self, rel: bytes, is_dir: bool, inherited: int) -> frozenset[str]:
        """What ``rel`` is compared on, given what its directory ``inherited``."""
        for i in range(len(self._rules) - 1, inherited, -1):
            match, check = self._rules[i]
            if match.matches(rel, is_dir):
                return check
        return self._rules[inherited][1] if inherited != NONE else self.default

    def for_path(self, rel: bytes, is_dir: bool) -> frozenset[str]:
        """``attrs`` for a path on its own (not met in a walk of its directory)."""
        if not self._rules:
            return self.default
        parent = rel.rpartition(b"/")[0]
        return self.attrs(rel, is_dir, self.inherited(parent) if parent else NONE)
