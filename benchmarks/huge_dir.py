#!/usr/bin/env python3
"""One huge directory: the peak summed RSS of `init` and `check`, and their times.

Anyone who may create files in a watched directory decides how big it gets; the memory
a run needs must not follow. Builds --entries empty files in one directory (reused
while the count matches), then runs `init` and `check` of it --runs times each, sampling
the RSS of the integrityd process and all its children every 20 ms, and prints the
medians. With --other DIR it runs that checkout's integrityd too, in turn.

Usage: python benchmarks/huge_dir.py [--entries 1000000] [--runs 3] [--other /tmp/old]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402 - the sibling script: its process-tree walk


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def measured(cmd: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    """(exit code, seconds, peak summed RSS in MiB) of one run."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak = 0
    while proc.poll() is None:
        pids = {proc.pid} | bench._descendants(proc.pid)
        peak = max(peak, sum(_rss_kib(pid) for pid in pids))
        time.sleep(0.02)
    proc.communicate()
    return proc.returncode, time.monotonic() - start, peak / 1024


def build(directory: Path, entries: int) -> None:
    """``entries`` empty files in ``directory``, reused if it holds that many already."""
    directory.mkdir(parents=True, exist_ok=True)
    if sum(1 for _ in os.scandir(directory)) == entries:
        return
    for p in directory.iterdir():
        p.unlink()
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(entries):
            os.close(os.open(f"f{i:08d}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=str(HERE / "corpus" / "huge"))
    ap.add_argument("--other", help="another checkout to compare with")
    args = ap.parse_args()
    directory = Path(args.dir) / "d"
    build(directory, args.entries)
    versions = {"this": HERE.parent}
    if args.other:
        versions["other"] = Path(args.other).resolve()
    results: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for name, tree in versions.items():
                env = dict(os.environ, PYTHONPATH=str(tree))
                manifest = os.path.join(tmp, f"{name}.db")
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(manifest + suffix):
                        os.unlink(manifest + suffix)
                base = [sys.executable, "-P", "-m", "integrityd"]
                init = [*base, "init", "--no-progress", "-m", manifest, str(directory)]
                check = [*base, "check", "--no-progress", "-m", manifest]
                for command, cmd in (("init", init), ("check", check)):
                    results.setdefault((name, command), []).append(measured(cmd, env))
    print(f"# one directory of {args.entries:,} empty files; medians of {args.runs} runs\n")
    print("| version | command | exit | seconds | peak summed RSS |")
    print("|---|---|---|---|---|")
    for (name, command), runs in results.items():
        codes = sorted({r[0] for r in runs})
        secs = statistics.median(r[1] for r in runs)
        rss = statistics.median(r[2] for r in runs)
        print(f"| {name} | {command} | {codes} | {secs:.1f} | {rss:.0f} MiB |")


if __name__ == "__main__":
    main()
