"""On a terminal: a progress line on stderr, console-format diagnostics, the daemon as text."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from .conftest import sparse, wait_for


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
    """On a terminal a fatal error is one plain line, not JSON, that first erases the line.

    The erasing: a progress line may stand there, and the message would be glued to it.
    """
    code, _, tty = run_on_tty("check", "-m", tmp_path / "missing.db")
    assert code == 18
    assert tty == (
        f"\r\x1b[Kintegrityd: error: manifest {tmp_path}/missing.db does not exist; "
        "create it with 'integrityd init'\r\n"
    )


def test_a_diagnostic_shows_an_escape_in_a_path_escaped(tmp_path: Path) -> None:
    """A path in a message is whatever bytes someone chose: its ESC must not reach the tty."""
    code, _, tty = run_on_tty("check", "-m", tmp_path / "m\x1b[2K\x1b[1A.db")
    assert code == 18
    assert tty == (
        f"\r\x1b[Kintegrityd: error: manifest {tmp_path}/m\\x1b[2K\\x1b[1A.db does not "
        "exist; create it with 'integrityd init'\r\n"
    )


def test_daemon_on_a_terminal_writes_text(tree: Path, manifest: Path) -> None:
    """`watch` on a terminal: readable lines with a time, console diagnostics, no JSON."""
    assert run_on_tty("init", "-m", manifest, tree)[0] == 0
    master, slave = pty.openpty()
    text = bytearray()

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the daemon closed the terminal
                return
            if not data:
                return
            text.extend(data)

    proc = subprocess.Popen(
        [sys.executable, "-m", "integrityd", "watch", "-m", str(manifest)],
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: b"integrityd: info: scan_finished" in text, what="the catch-up scan")
        (tree / "new.txt").write_bytes(b"hello\n")
        wait_for(lambda: b"added      " + os.fsencode(tree / "new.txt") in text, what="a text line")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        os.close(master)
    lines = bytes(text).decode().splitlines()
    added = next(line for line in lines if "added" in line and "new.txt" in line)
    assert re.fullmatch(r"\d\d:\d\d:\d\d added      .*/new\.txt", added.strip())
    assert not any(line.lstrip().startswith("{") for line in lines)
    assert any(line.startswith("integrityd watch: ") for line in lines)  # the summary


def test_a_usage_error_reads_as_argparse_would_say_it() -> None:
    """The usage, then one plain line: no doubled prefix, no debug fields."""
    code, _, tty = run_on_tty("check", "--jsn")
    assert code == 16
    assert tty == (
        "usage: integrityd [-h] [--version] COMMAND ...\r\n"
        "integrityd: error: unrecognized arguments: --jsn\r\n"
    )
    code, _, tty = run_on_tty("verify", "--max-rate", "fast")
    assert code == 16
    assert tty.splitlines()[-1] == (
        "integrityd verify: error: argument --max-rate: expected a rate like 100M, "
        "50MiB/s or 1G, got 'fast'"
    )


def test_progress_counts_and_eta_stay_true(tmp_path: Path, manifest: Path) -> None:
    """Past the baseline's count only the count; with bytes left the ETA is never 0:00:00.

    The big file is hashed by a task of its own, after every small file is counted: an
    ETA by files alone said 0:00 with 2 GiB left.
    """
    root = tmp_path / "tree"
    root.mkdir()
    sparse(root / "big.img", 2 << 30)
    (root / "a.txt").write_text("a")
    assert run_on_tty("init", "-m", manifest, root, "-j", "1")[0] == 0
    for i in range(40):
        (root / f"new{i}.txt").write_text("n")  # more entries than the baseline holds
    code, _, tty = run_on_tty("check", "-m", manifest, "-j", "1")
    assert code == 1
    lines = [line for line in tty.split("\r\x1b[K") if line.startswith("checking: ")]
    assert lines, tty
    for line in lines:
        if m := re.match(r"checking: ([\d,]+)/([\d,]+) files", line):
            assert int(m[1].replace(",", "")) <= int(m[2].replace(",", "")), line
        assert "ETA 0:00:00" not in line, line
