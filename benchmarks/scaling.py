#!/usr/bin/env python3
"""How integrityd check scales with workers, beside sha256sum, rhash and openssl.

For each corpus, runs `integrityd check` with 1, 2, 4, ... workers (median of --runs
after a warm-up) and the peers at the highest worker count, then prints a table. Meant
for a machine with many cores: python benchmarks/scaling.py --max-workers 16
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # the sibling script, for its corpora and timing helpers


def median_time(cmd: str, runs: int) -> float:
    """Median wall time of ``runs`` runs after one warm-up."""
    times = [bench.timed(cmd, rss=False)[0] for _ in range(runs + 1)]
    return statistics.median(times[1:])


def openssl_speed(workers: int) -> float | None:
    """Aggregate SHA-256 bytes/s of `openssl speed -evp sha256 -multi N` (16 KiB blocks)."""
    if not shutil.which("openssl"):
        return None
    out = subprocess.run(
        ["openssl", "speed", "-seconds", "2", "-evp", "sha256", "-multi", str(workers)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    m = re.search(r"^(?:evp|sha256)\s.*?([\d.]+)k\s*$", out, re.MULTILINE)
    return float(m.group(1)) * 1000 if m else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="small,large32")
    ap.add_argument("--max-workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=bench.HERE / "corpus")
    ap.add_argument("--seed", type=int, default=20261125)
    args = ap.parse_args()
    counts = [1]
    while counts[-1] * 2 <= args.max_workers:
        counts.append(counts[-1] * 2)
    w = counts[-1]
    bench.use_package()
    one = bench.one_core_sha256()
    ossl = openssl_speed(w)
    print(
        f"# {os.cpu_count()} CPUs; one-core hashlib.sha256 {one / 1e9:.2f} GB/s; "
        f"openssl speed -multi {w}: {ossl / 1e9:.2f} GB/s"
        if ossl
        else "openssl: not found"
    )
    exe = shlex.join(bench.INTEGRITYD)
    # The fixed cost of a run (interpreter, forkserver, workers, manifest), measured on a
    # tree with one file, is shown separately: "net" rates leave it out.
    fixed: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "t").mkdir()
        (Path(tmp) / "t" / "f").write_text("x")
        m = Path(tmp) / "m.db"
        subprocess.run(
            [*bench.INTEGRITYD, "init", "-m", str(m), str(Path(tmp) / "t")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for n in counts:
            fixed[n] = median_time(f"{exe} check -m {m} --no-progress -j {n}", args.runs)
    print(
        "fixed cost of one run (s): " + ", ".join(f"{n} workers {t:.3f}" for n, t in fixed.items())
    )
    cols = "workers | median s | files/s | MB/s | net files/s | net MB/s | net vs openssl"
    print(f"\n| corpus | tool | {cols} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.corpus.split(","):
        root = bench.build(bench.CORPORA[name], args.dir, args.seed)
        files, nbytes = bench.tree_stats(root)
        with tempfile.TemporaryDirectory() as tmp:
            m = Path(tmp) / "m.db"
            subprocess.run(
                [*bench.INTEGRITYD, "init", "-m", str(m), "--no-progress", str(root)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            check = f"{exe} check -m {m} --no-progress -j"
            rows = [("integrityd check", n, median_time(f"{check} {n}", args.runs)) for n in counts]
            find = bench.xargs(root, w, bench.corpus_files(root))
            for tool in ("sha256sum", "rhash --sha256"):
                if shutil.which(tool.split()[0]):
                    rows.append(
                        (f"{tool} (xargs)", w, median_time(f"{find} {tool} >/dev/null", args.runs))
                    )
            for tool, n, t in rows:
                net = t - fixed[n] if tool.startswith("integrityd") else t
                vs = f"{nbytes / net / ossl:.0%}" if ossl else "-"
                rate = f"{files / t:,.0f} | {nbytes / t / 1e6:,.0f}"
                net_rate = f"{files / net:,.0f} | {nbytes / net / 1e6:,.0f}"
                print(f"| {name} | {tool} | {n} | {t:.3f} | {rate} | {net_rate} | {vs} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
