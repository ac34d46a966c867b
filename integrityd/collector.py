"""The collector process: the only writer of the manifest, and the author of the report.

The hash workers compare with the baseline themselves; the collector receives their
reports (findings, rows to write, paths to delete), keeps the findings in a temporary
table, writes the rows (init, accept) and, at the end, commits and writes the report,
sorted by path, to stdout.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import time
from collections import Counter
from multiprocessing.connection import Connection

import structlog

from integrityd import logsetup
from integrityd.errors import IntegritydError
from integrityd.events import Failed, Finding, Finish, Job, NewCycle, Ready, Report, Summary
from integrityd.hashing import failed
from integrityd.manifest import ManifestStore, Mode
from integrityd.report import (
    FINDING_BITS,
    Progress,
    event,
    summary_event,
    summary_text,
    text_lines,
)

log = structlog.get_logger()


_MODES: dict[str, Mode] = {"init": "create", "accept": "write", "check": "read", "verify": "write"}
_VERBS = {"init": "baselining", "check": "checking", "accept": "re-hashing", "verify": "verifying"}
CHECKPOINT_S = 2.0  # verify commits its progress this often, so an interruption loses little


def run(data: Connection, ctl: Connection, job: Job) -> None:
    """Process entry point: report Ready, then Summary or Failed on ``ctl``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process owns shutdown
    logsetup.configure(job.log)
    mode = _MODES[job.command]
    try:
        with ManifestStore.open(job.manifest, mode) as store:
            ctl.send(Ready())
            with store.guard():
                collector = _Collector(store, job)
                if not collector.receive(data):
                    return  # main went away: leave without committing anything
                summary = collector.finish()
            if store.writable:
                store.commit()
            collector.write_report(summary)
        ctl.send(summary)
    except IntegritydError as e:
        ctl.send(Failed(type(e).__name__, str(e), e.exit_code))
    except Exception as e:
        log.exception("collector_failed")
        ctl.send(Failed("CollectorDied", f"internal error in the collector: {e!r}", 19))


class _Collector:
    def __init__(self, store: ManifestStore, job: Job) -> None:
        self.store = store
        self.job = job
        self.started = time.monotonic()
        self.counts: Counter[str] = Counter()
        self.files = 0
        self.bytes = 0
        self.unverified = 0
        self.progress = Progress(sys.stderr if job.progress else None, _VERBS[job.command])
        self.checkpoint = time.monotonic()
        if job.progress and job.command in ("check", "accept"):
            self.progress.set_total(sum(store.count_below(s.start) + 1 for s in job.scopes))

    def receive(self, data: Connection) -> bool:
        """Consume reports until Finish; False if the main process vanished first."""
        while True:
            try:
                msg = pickle.loads(data.recv_bytes())
            except (EOFError, OSError):
                return False
            if isinstance(msg, Report):
                self.report(msg)
            elif isinstance(msg, NewCycle):
                self.store.start_cycle(msg.root, msg.ns)
            elif isinstance(msg, Finish):
                return True

    def report(self, r: Report) -> None:
        self.files += r.files
        self.bytes += r.nbytes
        for f in r.findings:
            self.record(f)
        for path, kind, message in r.unreadable_dirs:
            self.record(
                Finding("unreadable", path, self.store.lookup(path), failed(path, kind, message))
            )
            self.unverified += self.store.count_below(path)
        if self.store.writable:
            if r.rows:
                self.store.write(r.rows)  # type: ignore[arg-type]
            if r.deletes:
                self.store.delete(r.deletes)
            if r.verified:
                self.store.mark_verified(r.verified)
                if time.monotonic() - self.checkpoint > CHECKPOINT_S:
                    self.store.commit(reopen=True)  # verify only: progress survives an interrupt
                    self.checkpoint = time.monotonic()
        self.progress.update(self.files, self.bytes)

    def record(self, f: Finding) -> None:
        self.counts[f.action] += 1
        self.store.add_finding(f.path, json.dumps(event(f, self.job.command), ensure_ascii=False))

    def finish(self) -> Summary:
        """Record the roots, then total up."""
        if self.job.command in ("init", "accept"):
            for scope in self.job.scopes:
                if scope.start == scope.root.path:
                    try:
                        device = os.lstat(scope.root.path).st_dev
                    except OSError:
                        device = 0
                    self.store.put_root(scope.root, device)
        verification = self.verification() if self.job.command == "verify" else None
        status = 0
        for kind, n in self.counts.items():
            if n:
                status |= FINDING_BITS[kind]
        if self.unverified:
            status |= 8
        if self.job.command in ("init", "accept"):
            status &= 8  # what init and accept found is now the baseline
        return Summary(
            command=self.job.command,
            files=self.files,
            bytes=self.bytes,
            seconds=time.monotonic() - self.started,
            counts=dict(self.counts),
            unverified=self.unverified,
            status=status,
            verification=verification,
        )

    def verification(self) -> dict[str, float]:
        """How much of the scopes this run covered, and how stale the stalest file now is."""
        total, oldest = 0, None
        for scope in self.job.scopes:
            count, first = self.store.verification_stats(scope.start)
            total += count
            if first is not None and (oldest is None or first < oldest):
                oldest = first
        age = (time.time_ns() - oldest) / 1e9 if oldest is not None else 0.0
        return {
            "total_files": total,
            "coverage": round(self.files / total, 6) if total else 1.0,
            "oldest_verified_age_s": round(age, 3),
        }

    def write_report(self, summary: Summary) -> None:
        self.progress.close()
        out = sys.stdout
        try:
            for data in self.store.findings():
                if self.job.json:
                    out.write(data + "\n")
                else:
                    out.write("\n".join(text_lines(json.loads(data))) + "\n")
            if self.job.json:
                out.write(json.dumps(summary_event(summary)) + "\n")
            else:
                out.write(summary_text(summary))
            out.flush()
        except BrokenPipeError:
            # The reader (e.g. `| head`) stopped listening; the exit code still tells all.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
