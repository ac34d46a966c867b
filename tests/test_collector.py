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
