"""A tree nested deeper than PATH_MAX bytes is walked, hashed and verified like any other.

The kernel refuses a path of PATH_MAX (4096) bytes or more with ENAMETOOLONG, so a
walk that opened directories by their full path stopped there with "File name too
long": anyone may nest a tree that deep, and an intruder's files there went unhashed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

from .conftest import findings, integrityd, summary

PATH_MAX = 4096  # Linux's, NUL included
LEVEL = "d" * 200
DEPTH = 25  # 25 x 201 bytes: past PATH_MAX from any temporary directory


def _descend(root: Path, depth: int) -> int:
    """An open descriptor of the directory ``depth`` levels of LEVEL below ``root``."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        with contextlib.suppress(FileExistsError):
            os.mkdir(LEVEL, dir_fd=fd)
        inner = os.open(LEVEL, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    return fd


def write_deep(root: Path, data: bytes) -> str:
    """Write ``deep`` at the bottom of the tree; return its path as events show it."""
    fd = _descend(root, DEPTH)
    try:
        f = os.open("deep", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=fd)
        os.write(f, data)
        os.close(f)
    finally:
        os.close(fd)
    path = "/".join([str(root), *[LEVEL] * DEPTH, "deep"])
    assert len(path) >= PATH_MAX
    return path


@pytest.fixture
def deep_root(tmp_path: Path) -> Path:
    root = tmp_path / "r"
    root.mkdir()
    (root / "top").write_bytes(b"top\n")
    return root


def test_a_file_below_path_max_is_baselined_and_its_change_found(
    deep_root: Path, manifest: Path
) -> None:
    """Baselined, then found modified by check and verify (before: unreadable, too long)."""
    path = write_deep(deep_root, b"as installed\n")
    r = integrityd("init", "--json", "-m", manifest, deep_root)
    assert (r.returncode, findings(r)) == (0, []), r.stdout
    assert summary(r)["files"] == DEPTH + 3  # the root, its levels, top and deep
    write_deep(deep_root, b"replaced\n")
    r = integrityd("check", "--json", "-m", manifest)
    assert (r.returncode, findings(r)) == (4, [("modified", path)]), r.stdout
    r = integrityd("verify", "--json", "-m", manifest)
    assert (r.returncode, findings(r)) == (4, [("modified", path)]), r.stdout


def test_a_deep_file_whose_directories_are_gone_is_removed(deep_root: Path, manifest: Path) -> None:
    """Verify reads it by its baseline path: gone is removed, not unreadable."""
    path = write_deep(deep_root, b"data\n")
    assert integrityd("init", "-m", manifest, deep_root).returncode == 0
    shutil.rmtree(deep_root / LEVEL)
    r = integrityd("verify", "--json", "-m", manifest)
    assert (r.returncode, findings(r)) == (2, [("removed", path)]), r.stderr
