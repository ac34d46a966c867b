#!/usr/bin/env python3
"""Compare two versions of integrityd: init and check of one corpus, round by round.

On a shared machine two bench.py runs minutes apart differ by more than most changes
do. This runs both versions in turn within each round (the order flips every round),
after a warm-up round, and prints for each the median and range of the wall time, the
median CPU time of all its processes, and in how many rounds the new one was faster.
Each tree is a checkout (a `git worktree`, or `git archive` unpacked) and runs its own
code, byte-compiled.
Usage: python benchmarks/ab.py OLD_TREE NEW_TREE [--corpus small,dirs] [--rounds 7]
       [--exclude PATTERN ...]   (the root's exclude patterns, through a config file)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # the sibling script: corpora

COMMANDS = ("init", "check")


def timed(tree: Path, args: list[str]) -> tuple[float, float]:
    """Run ``tree``'s integrityd; return (wall s, CPU s of it and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-P", "-m", "integrityd", *args],
        check=True,
        stdout=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(tree)),
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu


def one_round(
    trees: list[Path],
    order: list[int],
    root: Path,
    work: Path,
    workers: int,
    *,
    exclude: list[str],
) -> dict[int, list[float]]:
    """init, then check, of ``root`` by each tree in ``order``: index -> [wall, cpu, wall, cpu]."""
    out = {}
    for i in order:
        manifest = work / f"{i}.db"
        for old in work.glob(f"{i}.db*"):
            old.unlink()
        j = ["-j", str(workers), "--no-progress"]
        what = [str(root)]
        if exclude:  # only a config gives a root its excludes
            config = work / f"{i}.yaml"
            config.write_text(f"roots:\n  - path: {root}\n    exclude: {json.dumps(exclude)}\n")
            what = ["-c", str(config)]
        init = timed(trees[i], ["init", "-m", str(manifest), *j, *what])
        check = timed(trees[i], ["check", "-m", str(manifest), *j, *what[:2]])
        out[i] = [*init, *check]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--corpus", default="small", help=f"comma-separated: {','.join(bench.CORPORA)}")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--dir", type=Path, default=bench.HERE / "corpus")
    ap.add_argument("--seed", type=int, default=20261125)
    ap.add_argument("--exclude", action="append", default=[], metavar="PATTERN")
    args = ap.parse_args()
    trees = [args.old.resolve(), args.new.resolve()]
    for tree in trees:
        if not (tree / "integrityd" / "__init__.py").is_file():
            ap.error(f"{tree} holds no integrityd package")
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(tree / "integrityd")], check=True
        )

    print(f"# {os.uname().nodename}: {args.workers} workers, {args.rounds} rounds")
    print(f"# old: {trees[0]}\n# new: {trees[1]}")
    print(f"# exclude: {args.exclude}\n" if args.exclude else "")
    print("| corpus | command | old s | new s | new / old | new faster in | CPU s old, new |")
    print("|---|---|---|---|---|---|---|")
    for name in args.corpus.split(","):
        root = bench.build(bench.CORPORA[name], args.dir, args.seed)
        with tempfile.TemporaryDirectory(prefix="integrityd-ab-") as tmp:
            rounds = []
            for r in range(args.rounds + 1):  # round 0 warms the page cache up
                order = [0, 1] if r % 2 else [1, 0]
                got = one_round(trees, order, root, Path(tmp), args.workers, exclude=args.exclude)
                if r:
                    rounds.append([got[0], got[1]])
        for c, command in enumerate(COMMANDS):
            old = [x[0][2 * c] for x in rounds]
            new = [x[1][2 * c] for x in rounds]
            cpu = [statistics.median(x[t][2 * c + 1] for x in rounds) for t in (0, 1)]
            wins = sum(n < o for o, n in zip(old, new, strict=True))
            print(
                f"| {name} | {command} | {_spread(old)} | {_spread(new)} | "
                f"{statistics.median(new) / statistics.median(old):.2f} | "
                f"{wins} of {len(old)} | {cpu[0]:.2f}, {cpu[1]:.2f} |"
            )
    return 0


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


if __name__ == "__main__":
    raise SystemExit(main())
