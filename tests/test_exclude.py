"""Exclude patterns follow .gitignore habits."""

from __future__ import annotations

import pytest

from integrityd.exclude import Excluder


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
