r"""Exclude patterns: git's own ``.gitignore`` rules, matched against paths relative to a root.

The rules are git's, as the pathspec library implements them (its ``GitIgnoreSpec``), so
that what a git user expects is what happens:

- A pattern without ``/`` (a trailing one aside) matches a name at any depth: ``*.swp``.
- A pattern with ``/`` is anchored at the root: ``/mtab``, ``var/cache``.
- ``**`` crosses directories: ``logs/**/*.gz``; ``*`` and ``?`` stop at ``/``.
- A trailing ``/`` matches directories only: ``cache/``.
- ``!`` negates: ``*.log`` then ``!keep.log`` keeps ``keep.log``; the last match wins.
- ``\#``, ``\!`` and ``\ `` escape a leading ``#``, a leading ``!`` and a trailing space.

An excluded directory is not entered, so nothing below it can be included again (as in
git). Every pattern is checked when the config is loaded (``problem``): a pattern that
git would read as a comment, or one that matches nothing, is an error there too, never
a surprise later, and never an exception in a worker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathspec import GitIgnoreSpec


def _spec(patterns: Sequence[str]) -> GitIgnoreSpec:
    # Imported only where a root has excludes: 20 ms of start-up on the development VM.
    from pathspec import GitIgnoreSpec  # noqa: PLC0415

    return GitIgnoreSpec.from_lines(patterns)


def problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be used, or None if it can."""
    if not pattern.strip():
        return "an empty pattern matches nothing"
    if pattern.startswith("#"):
        return "a pattern that starts with '#' is a comment in .gitignore; write '\\#' for a name"
    try:
        spec = _spec([pattern])
    except (ValueError, re.error) as e:
        return f"invalid pattern: {e}"
    if not any(p.include is not None for p in spec.patterns):
        return "this pattern matches nothing"
    return None


_NAMED_GROUP = re.compile(r"\(\?P<\w+>")


def _any_of(spec: GitIgnoreSpec) -> re.Pattern[str] | None:
    """One regex that matches where any of ``spec``'s patterns does, if that is its answer.

    Without a negated pattern, a path is excluded exactly when some pattern matches it,
    and one alternation of pathspec's own regexes says so in one call into the regex
    engine. pathspec's loop over its patterns cost a small-file check 21% with six
    patterns (benchmarks/README.md). With a negation the order and the kind of match
    decide, and pathspec itself answers. Its named groups only rank those matches:
    here they become plain groups, so that they cannot clash.
    """
    parts = []
    flags = 0
    for p in spec.patterns:
        if p.include is None:
            continue
        regex = getattr(p, "regex", None)
        if p.include is False or not isinstance(regex, re.Pattern):
            return None
        parts.append(_NAMED_GROUP.sub("(?:", str(regex.pattern)))
        flags |= regex.flags
    try:
        return re.compile("|".join(f"(?:{part})" for part in parts), flags)
    except re.error:
        return None


class Excluder:
    """Decides whether a path below a root is excluded."""

    def __init__(self, patterns: Sequence[str]) -> None:
        # Patterns were checked (``problem``) when their RootConfig was made.
        self._spec = _spec(patterns) if patterns else None
        self._any = _any_of(self._spec) if self._spec is not None else None

    def __bool__(self) -> bool:
        return self._spec is not None

    def matches(self, rel: bytes, is_dir: bool) -> bool:
        """True if ``rel`` (relative to the root, no leading ``/``) itself is excluded."""
        if self._spec is None or not rel:
            return False
        # A trailing "/" is how pathspec tells a directory, for patterns like "cache/".
        path = os.fsdecode(rel) + "/" if is_dir else os.fsdecode(rel)
        if self._any is not None:
            return self._any.search(path) is not None  # as pathspec: search, not match
        return self._spec.match_file(path)

    def excludes(self, rel: bytes, is_dir: bool = False) -> bool:
        """True if ``rel`` or any directory above it is excluded."""
        if self._spec is None:
            return False
        parts = rel.split(b"/")
        for i in range(1, len(parts)):
            if self.matches(b"/".join(parts[:i]), is_dir=True):
                return True
        return self.matches(rel, is_dir)
