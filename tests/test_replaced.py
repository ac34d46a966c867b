"""A directory replaced by a symlink or a file: what it held is reported gone, everywhere."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Watcher, findings, integrityd


@pytest.fixture
def held(tree: Path) -> Path:
    """tree/sub with two files and a nested directory holding a third."""
    sub = tree / "sub"
    (sub / "deep").mkdir(parents=True, exist_ok=True)
    for p in (sub / "x", sub / "deep" / "y"):
        p.write_bytes(b"held\n")
    return sub


@pytest.mark.parametrize("by", ["symlink", "file"])
def test_a_replaced_directory_s_entries_are_removed(
    tree: Path, held: Path, manifest: Path, tmp_path: Path, by: str
) -> None:
    """Sub moved away, a symlink (or a file) in its place: all it held is removed."""
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    before = sorted(str(p) for p in held.rglob("*"))  # every entry below sub
    shutil.move(held, tmp_path / "elsewhere")
    if by == "symlink":
        held.symlink_to("/etc")
    else:
        held.write_bytes(b"not a directory\n")
    r = integrityd("check", "--json", "-m", manifest)
    assert r.returncode == 6, r.stdout  # removed (2) and changed (4)
    assert sorted(findings(r)) == sorted(
        [("metadata", str(held)), *(("removed", p) for p in before)]
    )

    assert integrityd("accept", "--all", "-m", manifest).returncode == 0
    r = integrityd("check", "--json", "-m", manifest)
    assert (r.returncode, findings(r)) == (0, []), r.stdout  # no orphans kept below it

    held.unlink()
    shutil.move(tmp_path / "elsewhere", held)  # the directory comes back: all of it is new
    r = integrityd("check", "--json", "-m", manifest)
    assert r.returncode == 5, r.stdout
    assert sorted(findings(r)) == sorted([("metadata", str(held)), *(("added", p) for p in before)])


def test_the_daemon_says_the_same(
    tree: Path, held: Path, manifest: Path, tmp_path: Path, watcher: Callable[..., Watcher]
) -> None:
    """The daemon reports the same findings for the same replacement."""
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    before = sorted(str(p) for p in held.rglob("*"))
    w = watcher("-m", manifest)
    w.ready()
    w.scanned()
    shutil.move(held, tmp_path / "elsewhere")
    held.symlink_to("/etc")
    for p in before:
        w.wait("removed", p)
    w.wait("metadata", held)
    assert w.stop() == 0
    assert sorted(set(w.findings())) == sorted(
        [("metadata", str(held)), *(("removed", p) for p in before)]
    )
