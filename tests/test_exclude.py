"""Exclude patterns follow git's .gitignore rules, negation and escapes included."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pathspec import GitIgnoreSpec

from integrityd.exclude import Excluder, problem


@pytest.mark.parametrize(
    ("pattern", "rel", "is_dir", "expected"),
    [
        ("*.swp", b"a.swp", False, True),
        ("*.swp", b"x/y/a.swp", False, True),  # no slash: any depth
        ("*.swp", b"a.swpx", False, False),
        ("/mtab", b"mtab", False, True),
        ("/mtab", b"x/mtab", False, False),  # leading slash: anchored
        ("var/cache", b"var/cache", True, True),
        ("var/cache", b"x/var/cache", True, False),  # inner slash: anchored too
        ("logs/**/*.gz", b"logs/a.gz", False, True),
        ("logs/**/*.gz", b"logs/x/y/a.gz", False, True),
        ("logs/*.gz", b"logs/x/a.gz", False, False),  # * stops at /
        ("cache/", b"cache", True, True),
        ("cache/", b"cache", False, False),  # trailing slash: directories only
        ("file?.txt", b"file1.txt", False, True),
        ("file?.txt", b"file12.txt", False, False),
        ("[ab].txt", b"a.txt", False, True),
        ("[!ab].txt", b"a.txt", False, False),
        ("[!ab].txt", b"c.txt", False, True),
        ("**/tmp", b"a/b/tmp", True, True),
        ("a+b(c).txt", b"a+b(c).txt", False, True),  # regex characters are literal
        ("*.log", b"new\nline.log", False, True),  # names may hold newlines
    ],
)
def test_pattern_table(pattern: str, rel: bytes, is_dir: bool, expected: bool) -> None:
    """Each pattern matches exactly the paths .gitignore would exclude."""
    assert Excluder([pattern]).matches(rel, is_dir) is expected


def test_excluded_directory_excludes_everything_below() -> None:
    """excludes() looks at ancestors, for baseline entries under a newly excluded dir."""
    e = Excluder(["cache/"])
    assert e.excludes(b"x/cache/deep/file")
    assert not e.excludes(b"x/cached/file")


def test_no_patterns_excludes_nothing() -> None:
    """An empty excluder is falsy and excludes nothing."""
    e = Excluder([])
    assert not e
    assert not e.excludes(b"anything")


@pytest.mark.parametrize(
    ("patterns", "rel", "is_dir", "expected"),
    [
        (["*.log", "!keep.log"], b"x.log", False, True),
        (["*.log", "!keep.log"], b"d/keep.log", False, False),  # negated: the last match wins
        (["!keep.log", "*.log"], b"keep.log", False, True),  # ... so order matters
        (["\\#hash"], b"#hash", False, True),  # escaped: a name, not a comment
        (["\\!bang"], b"!bang", False, True),  # escaped: a name, not a negation
        (["trail\\ "], b"trail ", False, True),  # an escaped trailing space is kept
        (["trail  "], b"trail", False, True),  # unescaped trailing spaces are not
        (["*.log"], b"\xff\xfe.log", False, True),  # a name that is not UTF-8
        (["/top"], b"", True, False),  # the root itself is never excluded
    ],
)
def test_git_rules(patterns: list[str], rel: bytes, is_dir: bool, expected: bool) -> None:
    """Negation, escapes and trailing spaces behave as in git."""
    assert Excluder(patterns).matches(rel, is_dir) is expected


def test_nothing_below_an_excluded_directory_comes_back() -> None:
    """As in git: a file cannot be included again once a directory above it is excluded."""
    e = Excluder(["cache/", "!cache/keep"])
    assert e.excludes(b"cache/keep")
    assert not e.excludes(b"cached")


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("[z-a]", "invalid pattern: bad character range z-a"),
        ("!", "invalid pattern"),
        ("#tmp", "a pattern that starts with '#' is a comment in .gitignore"),
        ("", "an empty pattern matches nothing"),
        ("/", "this pattern matches nothing"),
        ("*.swp", None),
    ],
)
def test_problems_are_found_before_anything_runs(pattern: str, why: str | None) -> None:
    """Each pattern is checked on its own; what git would ignore is an error, not a no-op."""
    found = problem(pattern)
    assert found == why if why is None else found is not None and found.startswith(why)


_PIECES = st.sampled_from(["a", "b", "*", "?", "**", "[ab]", ".", "x.log", "\\!", "\n", "é"])
_COMPONENT = st.lists(_PIECES, min_size=1, max_size=3).map("".join)
_PATTERNS = st.builds(
    lambda neg, lead, body, trail: neg + lead + "/".join(body) + trail,
    st.sampled_from(["", "", "!"]),
    st.sampled_from(["", "/", "**/"]),
    st.lists(_COMPONENT, min_size=1, max_size=3),
    st.sampled_from(["", "/"]),
)
_PATHS = st.lists(
    st.sampled_from(["a", "b", "ab", "x.log", "a.b", "é", "a\nb", "!a", "**"]), min_size=1,
    max_size=4,
).map("/".join)  # fmt: skip


@given(st.lists(_PATTERNS, min_size=1, max_size=4), _PATHS, st.booleans())
def test_the_fast_path_answers_as_pathspec_does(
    patterns: list[str], path: str, is_dir: bool
) -> None:
    """Without negations one combined regex answers; with them pathspec: always the same."""
    try:
        spec = GitIgnoreSpec.from_lines(patterns)
    except Exception:  # what problem() refuses: tested above
        return
    if any(problem(p) for p in patterns):
        return
    expected = spec.match_file(path + "/" if is_dir else path)
    assert Excluder(patterns).matches(os.fsencode(path), is_dir) is expected
