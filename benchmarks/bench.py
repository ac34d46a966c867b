#!/usr/bin/env python3
"""Benchmark integrityd init/check against rhash, sha256sum, hashdeep and AIDE.

Builds seeded corpora, runs every tool on the same corpus in the same run (an untimed
round that warms the caches and samples memory, then --runs timed rounds in which each
tool runs once, with the tree in the page cache), and prints a table of medians,
files/s, MB/s, summed peak RSS, and ratios to the best peer and to the SHA-256 limit
(cores x one-core hashlib speed). Tools that are not installed are skipped.
With --cold (root only: it says so and refuses otherwise) the page cache is dropped
(then a second's pause) before every run of every tool, the untimed round only samples
memory, and the peers are rhash at
-P2, -P4, -P8 and -P16 (via xargs) and parallel cat at the same depths, whose best is
the device's read limit ("vs read limit"). "vs best peer" is against the best rhash.
Usage: python benchmarks/bench.py [--corpus small,mixed,large,dirs,large32] [--runs 3]
                                  [--cold]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
POOL = 64 << 20


@dataclass(frozen=True)
class Corpus:
    """A seeded tree: file sizes drawn from a distribution, in a fixed directory layout."""

    name: str
    files: int
    dirs: int
    describe: str

    def sizes(self, rng: random.Random) -> list[int]:
        """File sizes for this corpus, drawn from ``rng``."""
        if self.name in ("small", "dirs"):
            return [min(int(rng.expovariate(1 / 4096)), 16 << 10) for _ in range(self.files)]
        if self.name == "mixed":  # log-normal, mean ~107 KB, ~2 GiB in all
            return [min(int(rng.lognormvariate(10.46, 1.5)), 64 << 20) for _ in range(self.files)]
        return [(4 << 30) // self.files] * self.files  # 4 GiB in equal files


CORPORA = {
    "small": Corpus("small", 100_000, 2_000, "100,000 files of 0-16 KiB in 2,000 dirs"),
    "dirs": Corpus("dirs", 40_000, 20_000, "40,000 files of 0-16 KiB, two to a directory"),
    "mixed": Corpus("mixed", 20_000, 400, "20,000 files, log-normal sizes, ~2 GiB"),
    "large": Corpus("large", 8, 1, "8 files of 512 MiB"),
    "large32": Corpus("large32", 32, 1, "32 files of 128 MiB (enough to keep 16 cores busy)"),
}


def build(corpus: Corpus, base: Path, seed: int) -> Path:
    """Create the corpus under base/name unless an identical one is already there."""
    root = base / corpus.name
    stamp = root / ".complete"
    params = json.dumps({"seed": seed, "files": corpus.files, "dirs": corpus.dirs})
    if stamp.exists() and stamp.read_text() == params:
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(seed)
    pool = rng.randbytes(POOL)
    sizes = corpus.sizes(rng)
    top = max(1, int(corpus.dirs**0.5))
    for i, size in enumerate(sizes):
        d = i % corpus.dirs
        directory = root / f"d{d % top:03d}" / f"e{d:05d}"
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / f"f{i:07d}.bin", "wb") as f:
            left = size
            while left:
                start = rng.randrange(POOL // 2)
                n = min(left, POOL // 2)
                f.write(pool[start : start + n])
                left -= n
    stamp.write_text(params)
    return root


def tree_stats(root: Path) -> tuple[int, int]:
    """(regular files, bytes) under root, not counting the stamp file."""
    files = total = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n != ".complete":
                files += 1
                total += os.lstat(os.path.join(dirpath, n)).st_size
    return files, total


def _descendants(pid: int) -> set[int]:
    tree: dict[int, list[int]] = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(e))
    out, stack = set(), [pid]
    while stack:
        for c in tree.get(stack.pop(), []):
            out.add(c)
            stack.append(c)
    return out


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def timed(cmd: str, rss: bool) -> tuple[float, int]:
    """Run a shell command; return wall seconds and the sum of its processes' peak RSS."""
    peaks: dict[int, int] = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(["bash", "-c", cmd], stdout=subprocess.DEVNULL)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            for p in _descendants(proc.pid) | {proc.pid}:
                peaks[p] = max(peaks.get(p, 0), _hwm(p))

    sampler = threading.Thread(target=sample)
    if rss:
        sampler.start()
    code = proc.wait()
    elapsed = time.perf_counter() - t0
    done.set()
    if rss:
        sampler.join()
    if code not in (0, 1):  # hashdeep and rhash may exit 1 on warnings; still timed
        print(f"warning: {cmd!r} exited {code}", file=sys.stderr)
    # bash itself is not the tool; the wrapper shell's own RSS would only add noise.
    peaks.pop(proc.pid, None)
    return elapsed, sum(peaks.values())


INTEGRITYD = [sys.executable, "-P", "-m", "integrityd"]
"""How the scripts start integrityd; ``use_package`` says which one that is."""


def use_package() -> None:
    """Make INTEGRITYD the package beside these scripts, byte-compiled as installing it is.

    ``-P`` keeps ``python -m`` from putting the working directory first on sys.path, so
    ``old/benchmarks/bench.py`` measures old's code wherever it is run from, and not
    whatever ``integrityd`` lies in the working directory or is installed.
    A source checkout run with PYTHONDONTWRITEBYTECODE=1 (the development VM has it set)
    would otherwise compile every module on every start, 30-50 ms of each run.
    """
    tree = str(HERE.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [tree, os.environ.get("PYTHONPATH")]))
    subprocess.run([sys.executable, "-m", "compileall", "-q", tree + "/integrityd"], check=True)


def one_core_sha256() -> float:
    """Bytes/s of hashlib.sha256 on one core, over in-memory data."""
    data = os.urandom(256 << 20)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        hashlib.sha256(data).digest()
        best = max(best, len(data) / (time.perf_counter() - t0))
    return best


def corpus_files(root: Path) -> int:
    """Number of corpus files (from the generator's layout, without walking the tree)."""
    return next(c.files for c in CORPORA.values() if c.name == root.name)


def xargs(root: Path, workers: int, files: int) -> str:
    """Build `find | xargs -P`, with few enough files per process to keep all busy."""
    per = max(1, min(2000, files // (workers * 4)))
    return f"find {root} -type f -name 'f*' -print0 | xargs -0 -P{workers} -n {per}"


def commands(root: Path, work: Path, workers: int) -> dict[str, tuple[str, str | None]]:
    """Map tool name -> (timed command, setup command run before each timed run)."""
    exe = shlex.join(INTEGRITYD)
    m = work / "m.db"
    w = workers
    find = xargs(root, w, corpus_files(root))
    cmds: dict[str, tuple[str, str | None]] = {
        "integrityd init": (f"{exe} init -m {m} -j {w} --no-progress {root}", f"rm -f {m}*"),
        "integrityd check": (f"{exe} check -m {m} -j {w} --no-progress", None),
        "integrityd verify": (f"{exe} verify -m {m} -j {w} --no-progress", None),
        "integrityd verify --max-rate 200M": (
            f"{exe} verify -m {m} -j {w} --no-progress --max-rate 200M",
            None,
        ),
        "sha256sum (xargs)": (f"{find} sha256sum", None),
    }
    if shutil.which("rhash"):
        cmds["rhash --sha256 (xargs)"] = (f"{find} rhash --sha256", None)
    if shutil.which("hashdeep"):
        known = work / "known.txt"
        cmds["hashdeep -j audit"] = (f"hashdeep -c sha256 -j{w} -r -a -k {known} {root}", None)
    if shutil.which("aide"):
        conf = work / "aide.conf"
        conf.write_text(
            f"database_in=file:{work}/aide.db\ndatabase_out=file:{work}/aide.db.new\n"
            f"num_workers={w}\nreport_url=stdout\n{root} p+u+g+s+m+sha256\n"
        )
        cmds["aide --check"] = (f"aide --check -c {conf}", None)
    return cmds


COLD_DEPTHS = (2, 4, 8, 16)
# The pause: the drop's own work went on for a moment after it returned (1.5 CPU-seconds
# measured in the run that followed on the development VM).
DROP = "sync && echo 3 > /proc/sys/vm/drop_caches && sleep 1"


def cold_commands(root: Path, work: Path, workers: int) -> dict[str, tuple[str, str | None]]:
    """The cold table: integrityd beside rhash and cat at several depths, each after a drop."""
    exe = shlex.join(INTEGRITYD)
    m = work / "m.db"
    files = corpus_files(root)
    cmds: dict[str, tuple[str, str | None]] = {
        "integrityd check": (f"{exe} check -m {m} -j {workers} --no-progress", DROP),
        "integrityd verify": (f"{exe} verify -m {m} -j {workers} --no-progress", DROP),
    }
    for depth in COLD_DEPTHS:
        find = xargs(root, depth, files)
        if shutil.which("rhash"):
            cmds[f"rhash --sha256 -P{depth}"] = (f"{find} rhash --sha256", DROP)
        cmds[f"cat -P{depth} (read limit)"] = (f"{find} cat > /dev/null", DROP)
    return cmds


def prepare(root: Path, work: Path, workers: int) -> None:
    """Baselines the check-style tools need, made once outside the timing."""
    subprocess.run(
        [*INTEGRITYD, "init", "-m", str(work / "m.db"), "--no-progress", str(root)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if shutil.which("hashdeep"):
        with open(work / "known.txt", "wb") as f:
            subprocess.run(
                ["hashdeep", "-c", "sha256", f"-j{workers}", "-r", str(root)], check=True, stdout=f
            )
    if shutil.which("aide"):
        subprocess.run(
            ["aide", "--init", "-c", str(work / "aide.conf")],
            check=False,
            stdout=subprocess.DEVNULL,
        )
        os.replace(work / "aide.db.new", work / "aide.db")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="small,mixed,large", help="comma-separated corpora")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per tool (after a warm-up)")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--dir", type=Path, default=HERE / "corpus", help="where corpora are built")
    ap.add_argument("--seed", type=int, default=20261125)
    ap.add_argument("--only", default="", help="comma-separated tool name prefixes to run")
    ap.add_argument(
        "--cold", action="store_true", help="drop the page cache before every run (root)"
    )
    args = ap.parse_args()
    if args.cold and os.geteuid() != 0:
        print("bench.py --cold drops the page cache before every run: run it as root")
        return 2
    if args.cold:
        print("# --cold: the page cache is dropped (sync; drop_caches=3) before every run\n")

    use_package()
    limit = one_core_sha256() * args.workers
    print(
        f"# {os.uname().nodename}: {args.workers} workers, "
        f"one-core hashlib.sha256 x {args.workers} = {limit / 1e9:.2f} GB/s\n"
    )
    last = "vs read limit" if args.cold else "vs SHA limit"
    header = f"| corpus | tool | median s | files/s | MB/s | peak RSS MiB | vs best peer | {last} |"
    print(header)
    print("|---|---|---|---|---|---|---|---|")
    for name in args.corpus.split(","):
        corpus = CORPORA[name]
        root = build(corpus, args.dir, args.seed)
        files, nbytes = tree_stats(root)
        with tempfile.TemporaryDirectory(prefix="integrityd-bench-") as tmp:
            work = Path(tmp)
            cmds = (cold_commands if args.cold else commands)(root, work, args.workers)
            prepare(root, work, args.workers)
            tools = [
                tool
                for tool in cmds
                if not args.only or any(tool.startswith(o) for o in args.only.split(","))
            ]
            times: dict[str, list[float]] = {tool: [] for tool in tools}
            peak: dict[str, int] = dict.fromkeys(tools, 0)
            # Round-robin: every tool once per round, so that a noisy minute on a shared
            # machine slows all tools alike instead of one tool's runs.
            # Round 0 is not timed: it warms the caches (or, cold, is dropped like the
            # rest) and is the one whose memory is sampled. The sampler reads all of /proc
            # 50 times a second, which took CPU from the tool it timed on 2 cores.
            for i in range(args.runs + 1):
                for tool in tools:
                    cmd, setup = cmds[tool]
                    if setup:
                        subprocess.run(["bash", "-c", setup], check=True)
                    t, r = timed(cmd, rss=not i and tool.startswith("integrityd"))
                    if i:
                        times[tool].append(t)
                    else:
                        peak[tool] = r
            results = {tool: (statistics.median(times[tool]), peak[tool]) for tool in tools}
            peers = [
                t for tool, (t, _) in results.items() if not tool.startswith(("integrityd", "cat"))
            ]
            best = min(peers) if peers else None
            reads = [t for tool, (t, _) in results.items() if tool.startswith("cat")]
            for tool, (t, rss) in results.items():
                ratio = f"{best / t:.2f}x" if best else "-"
                rss_text = f"{rss / 2**20:.0f}" if rss else "-"
                # Cold: the share of the device's read rate (the best cat); warm: of SHA-256.
                versus = f"{min(reads) / t:.0%}" if reads else f"{nbytes / t / limit:.0%}"
                print(
                    f"| {name} | {tool} | {t:.3f} | {files / t:,.0f} | {nbytes / t / 1e6:,.0f} | "
                    f"{rss_text} | {ratio} | {versus} |"
                )
    print(
        f"\n{', '.join(f'{c.name}: {c.describe}' for c in CORPORA.values())}. "
        "'vs best peer' > 1 means faster than the fastest other tool."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
