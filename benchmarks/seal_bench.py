#!/usr/bin/env python3
"""What checking a signed baseline costs: `check` with and without the public key.

On one corpus (default: small, 100,000 files in 2,000 directories), makes a key pair,
baselines the tree twice (unsigned, and signed), then runs, in turn, --rounds times:

    check            the unsigned baseline
    check --verify-key   the signed baseline, checked
    check PATH       of one directory (50 files), unsigned and checked

and prints the medians of wall time and of the CPU time of all processes, with the
ratio of checked to unsigned. init is timed signed and unsigned too (--rounds 3).

Usage: python benchmarks/seal_bench.py [--corpus small] [--rounds 11]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402 - the sibling script: corpora and how integrityd is started


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall, CPU of the command and its children) seconds; the exit code must be 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="small", choices=["small", "dirs"])
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    bench.use_package()
    root = bench.build(bench.CORPORA[args.corpus], HERE / "corpus", args.seed)
    one = next(d for d in sorted((root / "d000").iterdir()) if d.is_dir())
    ig = bench.INTEGRITYD
    with tempfile.TemporaryDirectory(prefix="seal-bench-") as tmp:
        work = Path(tmp)
        private, public = work / "k.pem", work / "k.pub"
        subprocess.run(
            [*ig, "key", "new", "--private", private, "--public", public, "--no-passphrase"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        plain, signed = work / "plain.db", work / "signed.db"
        quiet = ["--no-progress"]
        inits: dict[str, list[float]] = {"init": [], "init --sign-key": []}
        for _ in range(3):
            for db in (plain, signed):
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
            inits["init"].append(timed([*ig, "init", "-m", str(plain), *quiet, str(root)])[0])
            inits["init --sign-key"].append(
                timed(
                    [*ig, "init", "-m", str(signed), "--sign-key", str(private), *quiet, str(root)]
                )[0]
            )
        key = ["--verify-key", str(public)]
        runs = {
            "check": [*ig, "check", "-m", str(plain), *quiet, str(root)],
            "check --verify-key": [*ig, "check", "-m", str(signed), *key, *quiet, str(root)],
            "check DIR": [*ig, "check", "-m", str(plain), *quiet, str(one)],
            "check DIR --verify-key": [*ig, "check", "-m", str(signed), *key, *quiet, str(one)],
        }
        for cmd in runs.values():
            timed(cmd)  # warm the page cache and the byte-code
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, cmd in runs.items():
                results[name].append(timed(cmd))
    files = bench.corpus_files(root)
    print(f"corpus {args.corpus}: {files:,} files; {args.rounds} rounds, medians; "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'command':<26}{'wall s':>9}{'CPU s':>9}{'wall ratio':>12}{'CPU ratio':>11}")
    for name, samples in results.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        base = results[name.replace(" --verify-key", "")]
        bw = statistics.median(w for w, _ in base)
        bc = statistics.median(c for _, c in base)
        print(f"{name:<26}{wall:>9.3f}{cpu:>9.3f}{wall / bw:>12.3f}{cpu / bc:>11.3f}")
    for name, walls in inits.items():
        ratio = statistics.median(walls) / statistics.median(inits["init"])
        print(f"{name:<26}{statistics.median(walls):>9.3f}{'':>9}{ratio:>12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
