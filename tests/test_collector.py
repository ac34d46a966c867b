"""The daemon's collector on a real manifest: reports that arrive out of order."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from integrityd.collector import _Live
from integrityd.manifest import BaselineReader
from integrityd.messages import Finding, TaskResult

from .conftest import integrityd, scan_job


def report(started: float, findings: list[Finding], matched: list[bytes]) -> TaskResult:
    return TaskResult(1, 0, findings, [], [], [], [], matched, started)


def test_older_news_of_a_reported_path_is_dropped(
    tmp_path: Path, manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scan's task that began before the live change's task cannot undo what it said.

    The scan read the file before it was tampered with and found it as in the baseline;
    its report arrives after the live ``modified``. That must not become ``restored``,
    nor may an older state follow a newer one.
    """
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"baseline")
    assert integrityd("init", "-m", manifest, root).returncode == 0
    path = os.fsencode(root / "f")
    reader = BaselineReader(os.fsencode(manifest))
    old = reader.lookup(path)
    reader.close()
    assert old is not None
    tampered = old._replace(sha256=b"t" * 32)
    older = old._replace(sha256=b"o" * 32)
    live = _Live(scan_job("watch", root, manifest))
    try:
        live.report(report(20.0, [Finding("modified", path, old, tampered, ("content",))], []))
        live.report(report(10.0, [], [path]))  # the scan, begun before: as in the baseline
        live.report(report(15.0, [Finding("modified", path, old, older, ("content",))], []))
        live.report(report(30.0, [], [path]))  # really put back, seen by a later task
    finally:
        live.close()
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["event"]["action"], e["file"]["hash"]["sha256"]) for e in events] == [
        ("modified", (b"t" * 32).hex()),
        ("restored", old.sha256.hex() if old.sha256 else None),
    ]


def test_an_added_directory_is_reported_once_whatever_its_size(
    tmp_path: Path, manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A re-scan finds a new directory again, its size and times moved by what it holds.

    A directory's own size and link count follow its entries, which have findings of
    their own: the directory stays one added directory (its mode or owner would be news).
    """
    root = tmp_path / "root"
    (root / "new").mkdir(parents=True)
    assert integrityd("init", "-m", manifest, root / "new").returncode == 0  # another root
    path = os.fsencode(root / "new")
    reader = BaselineReader(os.fsencode(manifest))
    seen = reader.lookup(path)
    reader.close()
    assert seen is not None and seen.type == "dir"
    grown = seen._replace(size=seen.size + 4096, mtime_ns=seen.mtime_ns + 1, nlink=5)
    chmodded = grown._replace(mode=0o700)
    live = _Live(scan_job("watch", root, manifest))
    try:
        live.report(report(10.0, [Finding("added", path, None, seen)], []))
        live.report(report(20.0, [Finding("added", path, None, grown)], []))  # the re-scan
        live.report(report(30.0, [Finding("added", path, None, chmodded)], []))
    finally:
        live.close()
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["event"]["action"], e["file"]["mode"]) for e in events] == [
        ("added", f"{seen.mode:04o}"),
        ("added", "0700"),
    ]
