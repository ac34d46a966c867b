#!/usr/bin/env python3
"""Benchmark the daemon (`integrityd watch`): latency, storm throughput, memory, idle CPU.

On a seeded tree of --files small files in --dirs directories (default 100,000 in
10,000): baseline it, start the real daemon with a NOTIFY_SOCKET of our own, wait for
READY=1 and the catch-up scan, then measure

* memory: RSS of every daemon process, summed, once the scan is done;
* idle CPU: the daemon's CPU time over --idle seconds with nothing changing;
* latency during the catch-up scan: single small-file writes, one at a time, for as
  long as the scan runs (the workers are busy with the scan's tasks; the scan's time
  includes handling them);
* latency: --changes single small-file writes, one at a time, each timed from just
  before the write to the arrival of its event on the daemon's stdout (p50, p99, max);
* storm: every file of the tree rewritten as fast as one writer can, timed until the
  last of their events arrives, and checked for completeness (none lost);
* creation storms: as many files in new directories, written while the daemon works,
  and again with its hash workers stopped until the last is written (the backlog's
  memory bound, whatever this machine's writer speed); summed RSS sampled 5 times a
  second;

and prints a table. Usage: python benchmarks/watch_bench.py [--files 100000] [--dirs 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # the sibling script: which integrityd to run, and how

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
RUN = time.time_ns()  # in every content this run writes: a state the baseline never had


def build(base: Path, files: int, dirs: int, seed: int) -> Path:
    """Small files (0-8 KiB), ``files`` of them in ``dirs`` directories two levels deep."""
    root = base / f"watch-{files}-{dirs}"
    stamp = root / ".complete"
    if stamp.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(seed)
    per_dir = files // dirs
    for d in range(dirs):
        directory = root / f"g{d // 100:03d}" / f"d{d % 100:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        for f in range(per_dir):
            (directory / f"f{f:03d}").write_bytes(rng.randbytes(rng.randrange(8192)))
    stamp.write_bytes(b"")
    return root


def descendants(pid: int) -> set[int]:
    """The process ``pid`` and every live process below it."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            tree.setdefault(ppid, []).append(int(entry))
    out, stack = {pid}, [pid]
    while stack:
        for child in tree.get(stack.pop(), []):
            out.add(child)
            stack.append(child)
    return out


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    """Summed VmRSS (or VmHWM) of the daemon's process tree, in MiB."""
    return sum(_status_kib(p, key) for p in descendants(pid)) / 1024


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the daemon's process tree so far."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / CLK_TCK


class Daemon:
    """The real daemon, its events (with arrival times) and its notify messages."""

    def __init__(self, manifest: Path, workers: int, work: Path) -> None:
        self.sock_path = work / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.sock.settimeout(600)
        env = dict(os.environ, NOTIFY_SOCKET=str(self.sock_path))
        cmd = [*bench.INTEGRITYD, "watch", "-m", str(manifest), "-j", str(workers)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.events: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.logs: queue.Queue[dict[str, Any]] = queue.Queue()
        self.warnings: list[dict[str, Any]] = []
        threading.Thread(target=self._events, daemon=True).start()
        threading.Thread(target=self._logs, daemon=True).start()

    def _events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put((time.monotonic(), json.loads(line)))  # the arrival time

    def _logs(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                e = json.loads(line)
            except ValueError:
                e = {"event": "not_json", "level": "error", "line": line}
            self.logs.put(e)
            if e.get("level") in ("warning", "error"):
                self.warnings.append(e)
                print(f"daemon: {line.rstrip()}", file=sys.stderr)

    def ready(self) -> None:
        """Wait for READY=1."""
        while b"READY=1" not in self.sock.recv(4096):
            pass

    def log(self, name: str, timeout: float = 3600) -> dict[str, Any]:
        """The next log line named ``name``."""
        deadline = time.monotonic() + timeout
        while True:
            e = self.logs.get(timeout=max(0.1, deadline - time.monotonic()))
            if e.get("event") == name:
                return e

    def event(self, timeout: float = 60) -> tuple[float, dict[str, Any]]:
        """The next finding, with its arrival time."""
        return self.events.get(timeout=timeout)

    def forget_events(self) -> None:
        """Drop the events received so far (a phase starts with none pending)."""
        while not self.events.empty():
            self.events.get()

    def stop(self) -> float:
        """SIGTERM; return how long the daemon took to exit."""
        start = time.monotonic()
        self.proc.terminate()
        self.proc.wait(30)
        self.sock.close()
        return time.monotonic() - start


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def change(d: Daemon, path: Path, label: bytes) -> float:
    """Write ``path`` anew; return the ms from before the write to its event's arrival."""
    start = time.monotonic()
    path.write_bytes(b"%s %d\n" % (label, RUN))  # never a state seen before
    while True:
        arrived, e = d.event()
        if e["file"]["path"] == str(path):
            return (arrived - start) * 1000


def summarise(ms: list[float]) -> str:
    return f"p50 {pct(ms, 50):.1f} ms, p99 {pct(ms, 99):.1f} ms, max {max(ms):.1f} ms"


def latency(d: Daemon, files: list[Path], changes: int, seed: int) -> str:
    """Single changes, one at a time: from before the write to the event's arrival."""
    rng = random.Random(seed)
    ms = [change(d, files[rng.randrange(len(files))], b"change %d" % i) for i in range(changes)]
    return summarise(ms)


def latency_during_scan(d: Daemon, files: list[Path], seed: int) -> tuple[str, dict[str, Any]]:
    """Single changes, one at a time, until the catch-up scan ends; and its log line."""
    rng = random.Random(seed + 1)
    ms: list[float] = []
    while True:
        while not d.logs.empty():
            e = d.logs.get()
            if e.get("event") == "scan_finished":
                return f"{len(ms)} changes: {summarise(ms) if ms else '-'}", e
        ms.append(change(d, files[rng.randrange(len(files))], b"in scan %d" % len(ms)))


class RssPeak:
    """The largest summed RSS of the daemon's processes, sampled five times a second."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            self.peak = max(self.peak, rss_mib(self.pid))

    def stop(self) -> float:
        """Stop sampling; the peak."""
        self._done.set()
        self._thread.join()
        return self.peak


def await_all(d: Daemon, missing: set[str], sampler: RssPeak) -> float:
    """Take events until every path in ``missing`` has one (or none came for 120 s).

    ``missing`` keeps what never came; the return value is the largest summed RSS seen.
    """
    while missing:
        try:
            _, e = d.event(timeout=120)
        except queue.Empty:
            break
        missing.discard(e["file"]["path"])
    return sampler.stop()


def storm(d: Daemon, files: list[Path]) -> tuple[str, str]:
    """Rewrite every file as fast as one writer can; wait for every event.

    The rate is the writer's when the daemon keeps up; the lag after the last write
    says whether it did.
    """
    d.forget_events()
    missing = {str(p) for p in files}
    sampler = RssPeak(d.proc.pid)
    start = time.monotonic()
    for p in files:
        p.write_bytes(b"storm %d\n" % RUN)
    written = time.monotonic() - start
    peak = await_all(d, missing, sampler)
    took = time.monotonic() - start
    lost = len(missing)
    rate = len(files) / took
    return (
        f"written in {written:.1f} s ({len(files) / written:,.0f}/s), last event "
        f"{took - written:.2f} s after the last write; {rate:,.0f} changes/s, lost {lost}",
        f"{peak:.1f} MiB",
    )


def creation_storm(
    d: Daemon, root: Path, files: int, dirs: int, stopped: bool = False
) -> tuple[str, str]:
    """Like `tar x`: new directories full of new files, as fast as one writer can.

    ``stopped``: the hash workers SIGSTOPped while the files are written (then SIGCONTed),
    so that every event waits in the daemon's memory, however fast this machine's
    writer is next to its hashing: the backlog's memory bound, measured.
    """
    d.forget_events()
    base = root / f"new-{RUN}-{int(stopped)}"
    missing: set[str] = set()
    hashers = [p for p in descendants(d.proc.pid) if _comm(p) == "integrityd-hash"]
    if stopped:
        for p in hashers:
            os.kill(p, signal.SIGSTOP)
    sampler = RssPeak(d.proc.pid)
    start = time.monotonic()
    for i in range(files):
        directory = base / f"d{i % dirs:04d}"
        if i < dirs:
            directory.mkdir(parents=True)
            missing.add(str(directory))
        path = directory / f"f{i:06d}"
        path.write_bytes(b"new %d\n" % i)
        missing.add(str(path))
    missing.add(str(base))
    written = time.monotonic() - start
    if stopped:
        for p in hashers:
            os.kill(p, signal.SIGCONT)
    peak = await_all(d, missing, sampler)
    took = time.monotonic() - start
    shutil.rmtree(base)
    return (
        f"written in {written:.1f} s, last event {took - written:.2f} s after the last "
        f"write, lost {len(missing)}",
        f"{peak:.1f} MiB",
    )


def storms(d: Daemon, root: Path, files: list[Path]) -> list[tuple[str, str]]:
    """The three storms' rows: rewrites, creations, and creations with no hashing."""
    rows = []
    result, peak = storm(d, files)
    rows.append((f"storm: {len(files):,} files rewritten", result))
    rows.append(("RSS during the storm (max sampled)", peak))
    result, peak = creation_storm(d, root, len(files), max(1, len(files) // 100))
    rows.append((f"new: {len(files):,} files in {len(files) // 100:,} new dirs", result))
    rows.append(("RSS while they were created (max sampled)", peak))
    result, peak = creation_storm(d, root, len(files), max(1, len(files) // 100), True)
    rows.append(("the same with the hash workers stopped meanwhile", result))
    rows.append(("RSS while they waited (max sampled)", peak))
    return rows


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--dirs", type=int, default=10_000)
    ap.add_argument("--changes", type=int, default=1000, help="single changes for latency")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--dir", type=Path, default=HERE / "corpus", help="where the tree is built")
    ap.add_argument("--seed", type=int, default=20261125)
    args = ap.parse_args()

    bench.use_package()
    t = time.monotonic()
    root = build(args.dir, args.files, args.dirs, args.seed)
    print(f"tree: {root} ({time.monotonic() - t:.1f} s to build or find)", file=sys.stderr)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="integrityd-watch-bench-") as tmp:
        work = Path(tmp)
        manifest = work / "manifest.db"
        t = time.monotonic()
        init = [*bench.INTEGRITYD, "init", "-m", str(manifest), str(root)]
        subprocess.run([*init, "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        rows.append(("init (baseline)", f"{time.monotonic() - t:.2f} s"))

        files = sorted(p for p in root.rglob("f*") if p.is_file())
        d = Daemon(manifest, args.workers, work)
        t = time.monotonic()
        d.ready()
        rows.append(("start to READY=1", f"{time.monotonic() - t:.2f} s"))
        lat, done = latency_during_scan(d, files, args.seed)
        rate = args.files / done["seconds"]
        rows.append(("catch-up scan", f"{done['seconds']:.2f} s ({rate:,.0f} files/s)"))
        rows.append(("latency during the catch-up scan", lat))
        rows.append(("RSS after the scan, all processes", f"{rss_mib(d.proc.pid):.1f} MiB"))

        c0, t0 = cpu_s(d.proc.pid), time.monotonic()
        time.sleep(args.idle)  # measuring idleness: nothing to wait for but time
        idle = (cpu_s(d.proc.pid) - c0) / (time.monotonic() - t0)
        rows.append((f"idle CPU over {args.idle:.0f} s", f"{idle * 100:.2f} % of one core"))

        lat = latency(d, files, args.changes, args.seed)
        rows.append((f"latency, {args.changes} single changes", lat))
        rows += storms(d, root, files)
        rows.append(("peak RSS (VmHWM), all processes", f"{rss_mib(d.proc.pid, 'VmHWM'):.1f} MiB"))
        rows.append(("stop (SIGTERM to exit)", f"{d.stop():.2f} s, exit {d.proc.returncode}"))
        warned = sorted({str(w["event"]) for w in d.warnings}) or ["none"]
        rows.append(("warnings logged by the daemon", ", ".join(warned)))
    # The storm leaves new contents behind; the next run baselines them afresh.
    title = f"integrityd watch, {args.files:,} files in {args.dirs:,} dirs, {args.workers} workers"
    table(title, rows)
    return 0


def table(title: str, rows: list[tuple[str, str]]) -> None:
    """Print the results as Markdown, with the CPU they ran on."""
    cpu = Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(": \t")
    print(f"\n{title}\nCPU: {cpu}\n")
    width = max(len(k) for k, _ in rows)
    print(f"| {'measure':<{width}} | result |")
    print(f"|{'-' * (width + 2)}|---|")
    for k, v in rows:
        print(f"| {k:<{width}} | {v} |")


if __name__ == "__main__":
    raise SystemExit(main())
