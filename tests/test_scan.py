"""A hash worker's tasks on a real tree: however a walk is cut into tasks, it covers it once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from integrityd.messages import DirTask, Task, TaskResult
from integrityd.pipeline import SharedCount
from integrityd.scan import HAND_BACK_DIRS, Scanner

from .conftest import integrityd, scan_job

DIRS = 31  # the root, 5 directories in it and 5 in each of those
ROWS = (DIRS - 1) * 3 + 1  # a row for each directory but the root, two files in each, "top"


@pytest.fixture
def many_dirs(tmp_path: Path) -> Path:
    """Small directories two levels deep, each with two files; one file in the root."""
    root = tmp_path / "many"
    for i in range(5):
        for j in range(-1, 5):
            d = root / f"d{i}" / f"e{j}" if j >= 0 else root / f"d{i}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "f0").write_bytes(b"%d/%d" % (i, j))
            (d / "f1").write_bytes(b"")
    (root / "top").write_bytes(b"top")
    return root


@pytest.fixture
def empty_manifest(manifest: Path, tmp_path: Path) -> Path:
    """A manifest with no baseline for the trees under test: every entry they hold is new."""
    (tmp_path / "empty").mkdir()
    assert integrityd("init", "-m", manifest, tmp_path / "empty").returncode == 0
    return manifest


def walk(
    root: Path, manifest: Path, budget_s: float, budget_entries: int
) -> tuple[list[TaskResult], list[int]]:
    """Run an ``init`` scan of ``root`` task by task, as the workers would.

    Returns each task's report and the number of directories it walked; asserts that a
    task hands directories back only once its budget is spent.
    """
    start = os.fsencode(root)
    job = scan_job("init", root, manifest)
    scanner = Scanner(job, 1 << 16, budget_s=budget_s, budget_entries=budget_entries)
    todo: list[Task] = [DirTask((start,), 0)]
    reports, walked = [], []
    try:
        while todo:
            spawned, report, n = scanner.run(todo.pop())
            if any(isinstance(t, DirTask) for t in spawned):
                assert report.files >= budget_entries or budget_s < 1
            todo.extend(spawned)
            reports.append(report)
            walked.append(n)
    finally:
        scanner.close()
    return reports, walked


def rows(reports: list[TaskResult]) -> list[tuple[object, ...]]:
    """Every row the reports would write, sorted, with its blobs as bytes."""
    return sorted(
        tuple(bytes(v) if isinstance(v, bytearray) else v for v in row)
        for r in reports
        for row in r.rows
    )


def test_tasks_go_on_into_subdirectories_within_their_budget(
    many_dirs: Path, empty_manifest: Path
) -> None:
    """One task per directory, one for the whole tree, or cut by entries: the same rows."""
    single, walked = walk(many_dirs, empty_manifest, budget_s=0, budget_entries=1)
    assert walked == [1] * DIRS
    whole, walked = walk(many_dirs, empty_manifest, budget_s=3600, budget_entries=10**9)
    assert walked == [DIRS]
    by_entries, walked = walk(many_dirs, empty_manifest, budget_s=3600, budget_entries=9)
    assert sum(walked) == DIRS
    assert 1 < len(by_entries) < DIRS

    want = rows(single)
    assert len(want) == ROWS
    assert len({(r[0], r[1]) for r in want}) == len(want)  # no entry twice
    assert rows(whole) == want
    assert rows(by_entries) == want


@pytest.mark.parametrize(
    ("subdirs", "tasks"), [(1, 1), (15, 1), (16, 2), (31, 3), (40, 4), (99, 4)]
)
def test_leftovers_go_back_as_a_few_tasks_of_several_directories(
    tmp_path: Path, empty_manifest: Path, subdirs: int, tasks: int
) -> None:
    """Up to HAND_BACK tasks of at least HAND_BACK_DIRS directories each, covering them all.

    Handing back one directory a task made three tasks in four walk a single directory of
    the benchmark's small corpus: a round trip through three processes for 50 files.
    """
    root = tmp_path / "root"
    want = sorted(os.fsencode(root / f"d{i:02}") for i in range(subdirs))
    for d in want:
        os.makedirs(d)
    start = os.fsencode(root)
    scanner = Scanner(
        scan_job("check", root, empty_manifest), 1 << 16, budget_s=3600, budget_entries=1
    )
    try:
        spawned, _, walked = scanner.run(DirTask((start,), 0))
    finally:
        scanner.close()
    assert walked == 1  # the root alone spends the budget of one entry
    assert all(isinstance(t, DirTask) for t in spawned)
    assert len(spawned) == tasks
    assert sorted(p for t in spawned for p in t.paths) == want
    assert min(len(t.paths) for t in spawned) >= min(subdirs, HAND_BACK_DIRS)


def walk_while_waiting(
    root: Path, manifest: Path, waiting: int, readers: int | None = None
) -> tuple[list[Task], TaskResult, int, int]:
    """One task on ``root`` with a budget for the whole tree and ``waiting`` idle workers.

    Returns what it handed back, its report, the directories it walked and the count of
    waiting workers it left.
    """
    hungry = SharedCount()
    hungry.value = waiting
    job = scan_job("check", root, manifest, readers)
    scanner = Scanner(job, 1 << 16, budget_s=3600, budget_entries=10**9, hungry=hungry)
    try:
        spawned, report, walked = scanner.run(DirTask((os.fsencode(root),), 0))
    finally:
        scanner.close()
    return spawned, report, walked, hungry.value


@pytest.mark.parametrize(("hungry", "tasks"), [(0, 0), (1, 2), (3, 4), (15, 5)])
def test_idle_workers_get_a_share_of_a_walk_at_once(
    many_dirs: Path, empty_manifest: Path, hungry: int, tasks: int
) -> None:
    """With k workers waiting and no task queued, the walk is shared after one directory.

    The budget here would let the task walk the whole tree. With workers waiting it hands
    back the root's 5 subdirectories as k + 1 tasks (no more than there are directories)
    and lowers the count by the shares it gave away, so that other workers do not also
    split their walks for the same idle ones.
    """
    spawned, report, walked, left = walk_while_waiting(many_dirs, empty_manifest, hungry)
    if not hungry:
        assert (walked, spawned, report.files) == (DIRS, [], ROWS)
        return
    assert (walked, report.files) == (1, 6)  # the root: "top" and its 5 directories
    assert all(isinstance(t, DirTask) and t.recursive for t in spawned)
    assert len(spawned) == tasks
    want = sorted(os.fsencode(many_dirs / f"d{i}") for i in range(5))
    assert sorted(p for t in spawned for p in t.paths) == want
    assert left == hungry - (tasks - 1)


def test_a_single_directory_left_is_not_handed_to_an_idle_worker(
    tmp_path: Path, empty_manifest: Path
) -> None:
    """Handing over the one directory left gains nothing: the task walks on."""
    chain = tmp_path / "chain"
    deepest = chain.joinpath(*"abcdef")
    deepest.mkdir(parents=True)
    (deepest / "f").write_bytes(b"f")
    spawned, report, walked, left = walk_while_waiting(chain, empty_manifest, 15)
    assert (walked, spawned, report.files) == (7, [], 7)
    assert left == 15


def test_a_root_limited_to_one_reader_is_not_shared(many_dirs: Path, empty_manifest: Path) -> None:
    """A root read by one worker at a time (a spinning disk): idle workers cannot help."""
    spawned, report, walked, left = walk_while_waiting(many_dirs, empty_manifest, 15, readers=1)
    assert (walked, spawned, report.files) == (DIRS, [], ROWS)
    assert left == 15
