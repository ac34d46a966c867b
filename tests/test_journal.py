"""Diagnostics on the journal's stream carry their syslog priority, as journald reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def stderr_of(tmp_path: Path, journal: str | None) -> list[str]:
    """The stderr lines of `integrityd init /proc` (one warning) under ``journal``.

    ``journal`` is JOURNAL_STREAM's value; "match" is the dev:ino of the very pipe that
    stderr goes to, as systemd sets it.
    """
    r, w = os.pipe()
    st = os.fstat(w)
    env = dict(os.environ)
    env.pop("JOURNAL_STREAM", None)
    if journal == "match":
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    elif journal is not None:
        env["JOURNAL_STREAM"] = journal
    cmd = [sys.executable, "-m", "integrityd", "init", "-m", str(tmp_path / "m.db"), "/proc"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=w, env=env)
    os.close(w)
    with os.fdopen(r) as f:
        lines = f.read().splitlines()
    assert proc.wait(60) == 0
    return lines


def test_a_warning_on_the_journal_stream_starts_with_its_priority(tmp_path: Path) -> None:
    """<4> for a warning, then the JSON line itself (journald strips the prefix)."""
    lines = stderr_of(tmp_path, "match")
    assert len(lines) == 1, lines
    assert lines[0].startswith("<4>{")
    assert json.loads(lines[0][3:])["event"] == "pseudo_filesystem"


def test_no_prefix_where_stderr_is_not_the_journal_s_stream(tmp_path: Path) -> None:
    """No JOURNAL_STREAM, or one naming another file (stderr redirected): plain JSON."""
    for journal in (None, "1:1"):
        lines = stderr_of(tmp_path, journal)
        assert len(lines) == 1, lines
        assert json.loads(lines[0])["event"] == "pseudo_filesystem"
        (tmp_path / "m.db").unlink()
