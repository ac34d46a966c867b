"""The daemon's watch plan, on real trees: what is watched, how, and what is left to scans."""

from __future__ import annotations

import os
from pathlib import Path

from integrityd.watchplan import WatchPlan, plan


def make(root: Path, *dirs: str) -> bytes:
    for d in dirs:
        (root / d).mkdir(parents=True)
    return os.fsencode(root)


def planned(
    root: bytes, budget: int = 1 << 30, groups: int = 1024, exclude: tuple[str, ...] = ()
) -> WatchPlan:
    return plan(root, root, exclude, frozenset(), one_filesystem=True, budget=budget, groups=groups)


def rel(root: bytes, p: WatchPlan) -> list[tuple[str, bool, int]]:
    return [(os.fsdecode(d[len(root) :]) or "/", r, n) for d, r, n in p.watches]


def test_a_tree_within_the_limit_is_one_recursive_watch(tmp_path: Path) -> None:
    """The common case costs one emitter thread, as a plain recursive watch did."""
    root = make(tmp_path, "a/b", "c")
    p = planned(root)
    assert rel(root, p) == [("/", True, 4)]
    assert (p.directories, p.unwatched, p.cost) == (4, 0, 4)


def test_excluded_directories_are_not_watched(tmp_path: Path) -> None:
    """An excluded directory takes no watch: its parents are watched alone, its siblings whole."""
    root = make(tmp_path, "keep/x", "skip/y/z", "other")
    p = planned(root, exclude=("skip/",))
    assert rel(root, p) == [("/", False, 1), ("/keep", True, 2), ("/other", True, 1)]
    assert (p.directories, p.unwatched) == (4, 0)


def test_over_the_limit_the_upper_levels_are_watched_first(tmp_path: Path) -> None:
    """Every directory of depth 1 is watched before any of depth 2 takes from the budget."""
    root = make(tmp_path, "a/a1/a2", "b/b1", "c", "d")
    p = planned(root, budget=4)
    assert rel(root, p) == [("/", False, 1), ("/a", False, 1), ("/b", False, 1), ("/c", True, 1)]
    assert (p.directories, p.unwatched) == (8, 4)

    p = planned(root, budget=6)  # room for d, and for b's whole subtree before a's children
    assert rel(root, p) == [
        ("/", False, 1), ("/a", False, 1), ("/b", True, 2), ("/c", True, 1), ("/d", True, 1),
    ]  # fmt: skip
    assert (p.directories, p.unwatched) == (8, 2)


def test_the_number_of_emitter_threads_is_bounded(tmp_path: Path) -> None:
    """Past ``groups`` scheduled watches, the rest is left to the scans and counted."""
    root = make(tmp_path, *(f"d{i}/x" for i in range(5)), "skip")
    p = planned(root, groups=3, exclude=("/skip",))
    assert rel(root, p) == [("/", False, 1), ("/d0", True, 2), ("/d1", True, 2)]
    assert (p.directories, p.unwatched) == (11, 6)


def test_a_directory_below_the_root_is_planned_with_the_root_s_excludes(tmp_path: Path) -> None:
    """The daemon plans a new directory on its own; anchored excludes still count from the root."""
    root = make(tmp_path, "new/cache", "new/data")
    start = os.fsencode(tmp_path / "new")
    p = plan(root, start, ("/new/cache",), frozenset(), one_filesystem=True, budget=100, groups=10)
    assert [(os.fsdecode(d), r) for d, r, _ in p.watches] == [
        (str(tmp_path / "new"), False),
        (str(tmp_path / "new" / "data"), True),
    ]
