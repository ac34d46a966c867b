"""On a terminal: a progress line on stderr, console-format diagnostics."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path


def run_on_tty(*args: object) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal; return (code, stdout, tty text)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "integrityd", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every writer of the terminal has closed it
                break
            if not data:
                break
            chunks.append(data)
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(master)
    return proc.returncode, out, b"".join(chunks).decode("utf-8", "replace")


def test_progress_line_then_erased(tree: Path, manifest: Path) -> None:
    """A check draws "checking: N/M files" on the terminal and erases it before the report."""
    code, _, tty = run_on_tty("init", "-m", manifest, tree)
    assert code == 0
    assert "baselining: " in tty
    code, out, tty = run_on_tty("check", "-m", manifest)
    assert code == 0
    assert "checking: " in tty
    assert "/7 files" in tty  # the total comes from the baseline: an ETA is possible
    assert tty.endswith("\r\x1b[K")
    assert "all files match the baseline" in out


def test_no_progress_flag(tree: Path, manifest: Path) -> None:
    """--no-progress keeps the terminal quiet."""
    run_on_tty("init", "-m", manifest, tree)
    code, _, tty = run_on_tty("check", "-m", manifest, "--no-progress")
    assert (code, tty) == (0, "")


def test_fatal_error_reads_as_one_human_line(tmp_path: Path) -> None:
    """On a terminal a fatal error is one plain line, not JSON."""
    code, _, tty = run_on_tty("check", "-m", tmp_path / "missing.db")
    assert code == 18
    lines = tty.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("integrityd: error: manifest ")
    assert "does not exist" in lines[0]
