"""The collector process: the only writer of the manifest, and the author of the report.

It receives result batches (and walker notices) from the main process, has SQLite
compare each batch with the baseline, classifies the few entries that differ, keeps
the findings in a temporary table and, at the end, finds what was removed, commits
(for init and accept) and writes the sorted report to stdout.
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
from integrityd.compare import classify
from integrityd.errors import IntegritydError
from integrityd.events import (
    DirUnreadable,
    Failed,
    FileState,
    Finding,
    Finish,
    Job,
    Ready,
    Summary,
    WalkProgress,
)
from integrityd.exclude import Excluder
from integrityd.hashing import failed
from integrityd.manifest import ManifestStore
from integrityd.report import (
    FINDING_BITS,
    Progress,
    event,
    summary_event,
    summary_text,
    text_lines,
)
from integrityd.walk import relative

log = structlog.get_logger()


def run(data: Connection, ctl: Connection, job: Job) -> None:
    """Process entry point: report Ready, then Summary or Failed on ``ctl``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process owns shutdown
    logsetup.configure(job.log)
    mode = {"init": "create", "accept": "write", "check": "read"}[job.command]
    try:
        with ManifestStore.open(job.manifest, mode) as store:  # type: ignore[arg-type]
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
        self.unreadable_dirs: list[bytes] = []
        roots = {s.root.path: s.root for s in job.scopes}
        # Longest root first, so that a nested root's own options win.
        self.roots = sorted(roots.values(), key=lambda r: len(r.path), reverse=True)
        self.attrs = {r.path: frozenset(r.check) for r in self.roots}
        self.excluders = {r.path: Excluder(r.exclude) for r in self.roots}
        verb = {"init": "baselining", "check": "checking", "accept": "re-hashing"}[job.command]
        self.progress = Progress(sys.stderr if job.progress else None, verb)

    def root_of(self, path: bytes) -> bytes:
        for r in self.roots:
            base = r.path.rstrip(b"/") + b"/"
            if path == r.path or path.startswith(base):
                return r.path
        return self.roots[0].path

    def receive(self, data: Connection) -> bool:
        """Consume messages until Finish; False if the main process vanished first."""
        while True:
            try:
                msg = pickle.loads(data.recv_bytes())
            except (EOFError, OSError):
                return False
            if type(msg) is list:
                self.batch(msg)
            elif isinstance(msg, WalkProgress):
                self.progress.walked(msg.files, msg.bytes, msg.done)
            elif isinstance(msg, DirUnreadable):
                self.unreadable_dirs.append(msg.path.rstrip(b"/") + b"/")
                state = failed(msg.path, "permission", msg.error)
                self.record(Finding("unreadable", msg.path, self.store.lookup(msg.path), state))
            elif isinstance(msg, Finish):
                return True

    def batch(self, states: list[FileState]) -> None:
        self.files += len(states)
        self.bytes += sum(s.size for s in states if s.type == "file")
        for new, old in self.store.compare(states):
            root = self.root_of(new.path)
            finding = classify(old, new, self.attrs[root])
            if finding is not None:
                self.record(finding)
        self.progress.update(self.files, self.bytes)

    def record(self, f: Finding) -> None:
        if self.job.command == "init" and f.action != "unreadable":
            return  # a new baseline has nothing to compare with
        self.counts[f.action] += 1
        self.store.add_finding(f.path, json.dumps(event(f, self.job.command), ensure_ascii=False))

    def finish(self) -> Summary:
        """Find removed entries, then total up."""
        for scope in self.job.scopes:
            if self.store.writable and scope.start == scope.root.path:
                try:
                    device = os.lstat(scope.root.path).st_dev
                except OSError:
                    device = None
                self.store.put_root(scope.root, device or 0)
            self.removed(scope.start)
        if self.store.writable:
            self.store.drop_gone()
        status = 0
        for kind, n in self.counts.items():
            if n:
                status |= FINDING_BITS[kind]
        if self.unverified:
            status |= 8
        if self.job.command != "check":
            status &= 8  # what init and accept found is now the baseline
        return Summary(
            command=self.job.command,
            files=self.files,
            bytes=self.bytes,
            seconds=time.monotonic() - self.started,
            counts=dict(self.counts),
            unverified=self.unverified,
            status=status,
        )

    def removed(self, start: bytes) -> None:
        for old in self.store.unseen(start):
            path = old.path
            root = self.root_of(path)
            if path in self.job.skip or self.excluders[root].excludes(relative(root, path)):
                if self.store.writable:
                    self.store.mark_gone(path)  # no longer part of what is watched
                continue
            if any(path.startswith(d) for d in self.unreadable_dirs):
                self.unverified += 1  # could not look; it may well still be there
                continue
            self.record(Finding("removed", path, old, None))
            if self.store.writable:
                self.store.mark_gone(path)

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
