"""verify: rolling re-hashing within a budget, resumable, and safe on unmounted roots."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from integrityd.errors import ExitCode

from .conftest import (
    descendants,
    findings,
    holder_of,
    integrityd,
    sparse,
    start,
    summary,
    wait_for,
)


def verified_at(manifest: Path) -> dict[bytes, int]:
    """verified_ns of every regular file, as committed."""
    with sqlite3.connect(manifest) as c:
        rows = c.execute(
            "SELECT parent, name, verified_ns FROM files WHERE type = 'file'"
        ).fetchall()
    return {parent + b"/" + name: ns for parent, name, ns in rows}


@pytest.fixture
def files37(tmp_path: Path, manifest: Path) -> Path:
    """37 baselined files in two directories (37 is not a multiple of 4)."""
    root = tmp_path / "backup"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i in range(37):
        (root / ("a" if i % 2 else "b") / f"f{i:02d}").write_text(f"file {i}\n")
    assert integrityd("init", "-m", manifest, root).returncode == 0
    return root


def test_quarter_budget_covers_every_file_once_in_four_runs(files37: Path, manifest: Path) -> None:
    """Four runs of --budget 1/4 verify 10, 10, 10 and 7 files: each file exactly once."""
    before = verified_at(manifest)
    seen: list[set[bytes]] = []
    for _ in range(4):
        r = integrityd("verify", "-m", manifest, "--budget", "1/4", "--json")
        assert r.returncode == 0, r.stderr
        after = verified_at(manifest)
        seen.append({p for p, ns in after.items() if ns != before[p]})
        before = after
        assert summary(r)["total_files"] == 37
    assert [len(s) for s in seen] == [10, 10, 10, 7]
    assert set().union(*seen) == set(before)
    assert sum(len(s) for s in seen) == 37  # pairwise disjoint


def test_verify_classifies_corruption_and_backdating(files37: Path, manifest: Path) -> None:
    """Same size and mtime with new content is corrupted; an older mtime is backdated."""
    rot = files37 / "a" / "f01"
    st = rot.stat()
    rot.write_text("file 9\n")  # same length
    os.utime(rot, ns=(st.st_atime_ns, st.st_mtime_ns))
    old = files37 / "b" / "f02"
    old.write_text("an older copy\n")
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))
    gone = files37 / "b" / "f04"
    gone.unlink()  # one batch spans both directories; each file meets its own baseline
    r = integrityd("verify", "-m", manifest, "--json")
    assert r.returncode == ExitCode.CHANGED | ExitCode.REMOVED, r.stderr
    assert sorted(findings(r)) == [
        ("backdated", str(old)),
        ("corrupted", str(rot)),
        ("removed", str(gone)),
    ]
    s = summary(r)
    assert (s["files"], s["corrupted"], s["backdated"], s["removed"]) == (36, 1, 1, 1)


def test_interrupted_verify_resumes(tmp_path: Path, manifest: Path) -> None:
    """Progress is committed as verify goes: after SIGINT the next run takes the rest first."""
    root = tmp_path / "big"
    root.mkdir()
    for i in range(16):
        sparse(root / f"img{i:02d}", 384 << 20)
    assert integrityd("init", "-m", manifest, root).returncode == 0
    base = verified_at(manifest)
    proc = start("verify", "-m", manifest, "-j", "1", "--no-progress")

    def committed() -> int:
        return sum(ns != base[p] for p, ns in verified_at(manifest).items())

    wait_for(committed, timeout=60, what="a first committed batch of verified files")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    done = committed()
    assert 0 < done < 16
    first = verified_at(manifest)
    r = integrityd("verify", "-m", manifest, "--budget", f"{16 - done}/16")
    assert r.returncode == 0, r.stderr
    final = verified_at(manifest)
    assert all(final[p] != base[p] for p in final)  # every file verified by one run or the other
    assert sum(final[p] != first[p] for p in final) == 16 - done  # and the rest came first


def test_emptied_or_missing_root_fails_without_removals(files37: Path, manifest: Path) -> None:
    """An empty or missing root is exit 21 with a clear message, never 'removed'."""
    for child in files37.iterdir():
        subprocess.run(["rm", "-rf", str(child)], check=True)
    for cmd in ("check", "verify"):
        r = integrityd(cmd, "-m", manifest, "--json")
        assert r.returncode == 21, r.stderr
        assert "is empty but has a baseline; is the filesystem mounted?" in r.stderr
        assert r.stdout == ""  # stopped before any report: no "removed" at all
    files37.rmdir()
    r = integrityd("verify", "-m", manifest)
    assert r.returncode == 21
    assert "does not exist" in r.stderr


def test_summary_file_and_bad_budget(files37: Path, manifest: Path, tmp_path: Path) -> None:
    """--summary-file gets the JSON summary; a bad --budget is a usage error."""
    out = tmp_path / "last-verify.json"
    r = integrityd("verify", "-m", manifest, "--budget", "10G", "--summary-file", out)
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())["summary"]
    assert (s["command"], s["files"], s["total_files"], s["coverage"]) == ("verify", 37, 37, 1.0)
    r = integrityd("verify", "-m", manifest, "--budget", "often")
    assert r.returncode == 16
    assert "expected a duration (90min, 2h), a size (200GiB) or a fraction (1/7)" in r.stderr


def test_max_rate_and_idle_io(tmp_path: Path, manifest: Path) -> None:
    """--max-rate 4M needs about two seconds for 8 MiB; --idle-io runs without complaint."""
    root = tmp_path / "r"
    root.mkdir()
    (root / "data").write_bytes(os.urandom(8 << 20))
    assert integrityd("init", "-m", manifest, root).returncode == 0
    started = time.monotonic()
    r = integrityd("verify", "-m", manifest, "--max-rate", "4M", "--idle-io", "-j", "2")
    elapsed = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    assert "idle_io_unavailable" not in r.stderr
    assert elapsed >= 1.5  # 8 MiB at 4 MiB/s, less the first read's head start
    r = integrityd("verify", "-m", manifest, "--max-rate", "fast")
    assert r.returncode == 16
    assert "expected a rate like 100M" in r.stderr


def test_root_workers_limit_readers(tmp_path: Path, manifest: Path) -> None:
    """A root with 'workers: 1' has its files read one at a time, even with -j 2.

    /proc is sampled one process after another, so a hand-over between two workers can
    show both for an instant; without the limit, both read for most of the run.
    """
    root = tmp_path / "spinning"
    root.mkdir()
    images = [sparse(root / f"img{i}", 768 << 20) for i in range(3)]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"manifest: {manifest}\nroots:\n  - path: {root}\n    workers: 1\n")
    assert integrityd("init", "-c", cfg).returncode == 0
    proc = start("verify", "-c", cfg, "-j", "2", "--no-progress")
    samples = []
    while proc.poll() is None:
        pids = descendants(proc.pid)
        samples.append(sum(holder_of(img, pids) is not None for img in images))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    busy = [n for n in samples if n]
    assert len(busy) >= 20, samples  # enough samples while reading to tell
    assert busy.count(2) / len(busy) < 0.2, samples
    assert max(busy) <= 2
