"""The collector process: the only writer of the manifest, and the author of the report.

The hash workers compare with the baseline themselves; the collector receives their
reports (findings, rows to write, paths to delete), keeps the findings in a temporary
table, writes the rows (init, accept) and, at the end, commits and writes the report,
sorted by path, to stdout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from integrityd import changelog, logsetup
from integrityd.attributes import sees_trusted
from integrityd.errors import ExitCode, Fatal, IntegritydError
from integrityd.failures import failed
from integrityd.manifest import BaselineReader, ManifestStore, guard
from integrityd.messages import (
    RECORDED,
    ErrorType,
    Failed,
    FileState,
    Finding,
    Finish,
    Job,
    LiveStats,
    NewCycle,
    Ping,
    Ready,
    Summary,
    TaskResult,
)
from integrityd.packages import Attributor, Dpkg, acceptable
from integrityd.paths import join
from integrityd.report import (
    FINDING_BITS,
    Context,
    Progress,
    count,
    escape_path,
    event,
    package_name,
    summary_event,
    summary_text,
    text_lines,
)
from integrityd.seal import Info
from integrityd.shown import visible
from integrityd.signals import ignore_stop_signals, name_process

log = logsetup.get_logger()


CHECKPOINT_S = 2.0  # verify commits its progress this often, so an interruption loses little


def run(data: Connection, ctl: Connection, job: Job) -> None:
    """Process entry point: report Ready, then Summary or Failed on ``ctl``."""
    name_process("integrityd-coll")
    ignore_stop_signals()  # main stops us by closing our input, or with SIGKILL
    logsetup.configure(job.log)
    if job.policy.live:
        _watch(data, ctl, job)
        return
    mode = job.policy.manifest
    parent = os.getppid()
    try:
        with ManifestStore.open(job.manifest, mode) as store:
            if mode == "progress" and not store.writable:
                log.warning(
                    "progress_not_recorded",
                    message=f"manifest {os.fsdecode(job.manifest)} is read-only here: "
                    "verifying without recording which files were verified",
                )
            with store.guard():
                # Before Ready, so before any file is read: a baseline that does not
                # hold is reported alone, with nothing compared and nothing written.
                signature = _signature(store, job)
            ctl.send(Ready(store.trusted()))
            with store.guard():
                if job.policy.compares and not job.policy.writes:
                    _say_unrecorded(store)
                if job.policy.compares:
                    _say_unseen_trusted(store)
                collector = _Collector(store, job)
                if not collector.receive(data):
                    return  # main went away: leave without committing anything
                summary = collector.finish()
                if job.policy.writes:
                    signature = store.reseal(job.sign_key, _entry(job, summary, store))
                summary = dataclasses.replace(summary, signature=signature.event())
            if os.getppid() != parent:
                # Main died after it sent Finish: nobody will see the report, and a
                # baseline nobody saw accepted must not be committed. Closing rolls back.
                return
            if store.writable:
                store.commit()
            collector.write_report(summary)
        ctl.send(summary)
    except Exception as e:
        ctl.send(_failure(e))


def _signature(store: ManifestStore, job: Job) -> Info:
    """Check the seal as this command needs: a writer all of it, a reader its top.

    A reader's workers check each directory as they read it (``BaselineReader``).
    """
    if job.policy.writes:
        store.check_writer(job.sign_key, job.command)
        return Info("unsigned")  # replaced by what reseal() signs
    # verify goes by the baseline's entries, not the disk: an entry deleted from the
    # baseline is a file it would never re-hash. Count each directory's entries first.
    # A walk reads every directory, and checks each as it does: no need to count.
    # The daemon checks every entry before READY: it starts once and runs for months.
    starts = [s.start for s in job.scopes] if job.policy.verifies else []
    info = store.signature(job.verify_key, job.min_seq, everything=job.policy.live, starts=starts)
    if info.state == "unchecked":
        log.warning(
            "signature_not_checked",
            message=f"manifest {os.fsdecode(job.manifest)} is signed by key {info.key_id}, "
            "and no public key was given (--verify-key, or signing.public_key): its "
            "signature was not checked",
            key_id=info.key_id,
        )
    return info


def _entry(job: Job, summary: Summary, store: ManifestStore) -> dict[str, Any]:
    """The change log entry for this run."""
    return changelog.entry(
        job.policy.logged_as,
        job.argv,
        [s.start for s in job.scopes],
        summary.counts,
        store.accepted(changelog.ACCEPTED_LISTED) if job.policy.compares else None,
    )


def _say_unrecorded(store: ManifestStore) -> None:
    """Once per run: entries from before schema 3, whose attributes are not compared."""
    if old := store.unrecorded():
        log.warning(
            "attributes_not_recorded",
            message=f"{old:,} entries of this baseline were recorded before integrityd "
            "read link counts, device numbers, capabilities, ACLs, SELinux labels, xattrs "
            "and inode flags; those are compared once the entries are accepted again "
            "(integrityd accept --all)",
            entries=old,
        )


def _say_unseen_trusted(store: ManifestStore) -> None:
    """Once per run, for a process the kernel hides trusted.* xattrs from (scan.py)."""
    if sees_trusted() or not (count := store.with_trusted_xattrs()):
        return
    log.warning(
        "trusted_xattrs_not_compared",
        message=f"{count:,} {'entry' if count == 1 else 'entries'} of this baseline "
        f"{'has' if count == 1 else 'have'} trusted.* extended attributes, "
        "which the kernel shows only to a process with CAP_SYS_ADMIN (this one has not): "
        "they are not compared in this run, and an accept keeps them as recorded",
        entries=count,
    )


class _Tally:
    """What one scope's tasks examined and found."""

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0
        self.unverified = 0
        self.counts: Counter[str] = Counter()


def _verification(files: int, stats: list[tuple[int, int | None]]) -> dict[str, float]:
    """How much of the scopes a verify covered, and how stale the stalest file now is.

    ``stats``: each scope's (baselined files, oldest verification time in ns or None).
    """
    total = sum(n for n, _ in stats)
    firsts = [first for _, first in stats if first is not None]
    age = (time.time_ns() - min(firsts)) / 1e9 if firsts else 0.0
    return {
        "total_files": total,
        "coverage": round(files / total, 6) if total else 1.0,
        "oldest_verified_age_s": round(age, 3),
    }


def _attributor(job: Job) -> Attributor | None:
    """The package database's lookups for a job that has one (packages.py)."""
    return None if job.packages is None else Attributor(Dpkg(job.packages))


def _failure(e: Exception) -> Failed:
    """What main is told when the collector cannot go on: ours, or a bug (logged here)."""
    if isinstance(e, IntegritydError):
        return Failed(type(e).__name__, str(e), e.exit_code)
    log.exception("collector_failed")
    return Failed("CollectorDied", f"internal error in the collector: {e!r}", Fatal.INTERNAL)


def _unlisted(path: bytes, kind: ErrorType, message: str, old: FileState | None) -> Finding:
    """The finding for a directory that could not be listed."""
    return Finding("unreadable", path, old, failed(path, kind, message))


def _messages(data: Connection) -> Iterator[object]:
    """What main sends, unpickled, until it closes the pipe (or dies)."""
    while True:
        try:
            yield pickle.loads(data.recv_bytes())
        except (EOFError, OSError):
            return


class _Collector:
    def __init__(self, store: ManifestStore, job: Job) -> None:
        self.store = store
        self.job = job
        self.ecs = Context()
        self.started = time.monotonic()
        self.counts: Counter[str] = Counter()
        self.files = 0
        self.bytes = 0
        self.unverified = 0
        self.progress = Progress(sys.stderr if job.progress else None, job.policy.verb)
        self.checkpoint = time.monotonic()
        self.packages = _attributor(job)
        self.declined = 0  # accept --packages: findings no package vouches for, left as they are
        self.scopes = [_Tally() for _ in job.scopes]  # the same totals, per scope
        if job.progress and job.policy.counts_total:
            totals = [store.totals_below(s.start) for s in job.scopes]
            self.progress.set_total(sum(n + 1 for n, _ in totals), sum(b for _, b in totals))

    def receive(self, data: Connection) -> bool:
        """Consume reports until Finish; False if the main process vanished first."""
        for msg in _messages(data):
            if isinstance(msg, TaskResult):
                self.report(msg)
            elif isinstance(msg, NewCycle) and self.store.writable:
                self.store.start_cycle(msg.root, msg.ns)
            elif isinstance(msg, Finish):
                return True
        return False

    def report(self, r: TaskResult) -> None:
        self.files += r.files
        self.bytes += r.nbytes
        tally = self.scopes[r.scope] if 0 <= r.scope < len(self.scopes) else _Tally()
        tally.files += r.files
        tally.bytes += r.nbytes
        declined: set[bytes] = set()
        for f in r.findings:
            package = self.packages.package(f) if self.packages is not None else None
            if self.job.policy.by_package and not acceptable(f, package):
                declined.add(f.path)  # neither written nor shown: `check` shows it
                continue
            self.record(f, tally, package)
        self.declined += len(declined)
        for path, kind, message in r.unreadable_dirs:
            self.record(_unlisted(path, kind, message, self.store.lookup(path)), tally)
            below = self.store.count_below(path)
            self.unverified += below
            tally.unverified += below
        if self.store.writable:
            rows = r.rows
            if declined:
                rows = [row for row in rows if join(bytes(row[0]), row[1]) not in declined]  # type: ignore[arg-type, call-overload]
            if rows:
                self.store.write(rows)
            if r.deletes:
                self.store.delete(r.deletes)
            if r.verified:
                self.store.mark_verified(r.verified)
                if time.monotonic() - self.checkpoint > CHECKPOINT_S:
                    self.store.commit(reopen=True)  # verify only: progress survives an interrupt
                    self.checkpoint = time.monotonic()
        self.progress.update(self.files, self.bytes)

    def record(self, f: Finding, tally: _Tally, package: dict[str, Any] | None = None) -> None:
        self.counts[f.action] += 1
        tally.counts[f.action] += 1
        if f.action != "unreadable" and f.new is not None and f.new.error_type is not None:
            self.unverified += 1  # a change lstat() showed; the content itself went unread
            tally.unverified += 1
        data = json.dumps(event(f, self.job.command, self.ecs, package), ensure_ascii=False)
        self.store.add_finding(f.path, data)

    def finish(self) -> Summary:
        """Record the roots, then total up."""
        if self.job.policy.writes:
            for scope in self.job.scopes:
                if scope.start == scope.root.path:
                    try:
                        device = os.lstat(scope.root.path).st_dev
                    except OSError:
                        device = 0
                    self.store.put_root(scope.root, device)
        if self.declined:
            log.warning(
                "packages_declined",
                message=f"{count(self.declined, 'changed file')} left as they are: no package "
                "vouches for them (`integrityd check` shows them)",
                files=self.declined,
            )
        stats = (
            [self.store.verification_stats(s.start) for s in self.job.scopes]
            if self.job.policy.verifies
            else []
        )
        roots = []
        for i, (scope, tally) in enumerate(zip(self.job.scopes, self.scopes, strict=True)):
            root: dict[str, Any] = {
                "path": escape_path(scope.start),
                "files": tally.files,
                "bytes": tally.bytes,
                "counts": dict(tally.counts),
                "unverified": tally.unverified,
                "exit_code": self.status(tally.counts, tally.unverified),
            }
            if stats:
                root |= _verification(tally.files, [stats[i]])
            roots.append(root)
        return Summary(
            command=self.job.command,
            files=self.files,
            bytes=self.bytes,
            seconds=time.monotonic() - self.started,
            counts=dict(self.counts),
            unverified=self.unverified,
            status=self.status(self.counts, self.unverified),
            verification=_verification(self.files, stats) if stats else None,
            roots=tuple(roots),
        )

    def status(self, counts: Counter[str], unverified: int) -> int:
        """The exit bits of these findings, as far as this command's status keeps them."""
        status = 0
        for kind, n in counts.items():
            if n:
                status |= FINDING_BITS[kind]
        if unverified:
            status |= ExitCode.INCOMPLETE
        return status & self.job.policy.exit_bits  # what init and accept found is the baseline now

    def write_report(self, summary: Summary) -> None:
        self.progress.close()
        out = sys.stdout
        limit = self.job.max_findings
        try:
            shown = 0
            # The text report sets apart what packages changed, each under a heading, after
            # everything else: an intruder's file does not drown among an upgrade's.
            by_package: dict[str, list[dict[str, Any]]] = {}
            for data in self.store.findings():
                if limit is not None and shown >= limit:
                    break
                if self.job.json:
                    out.write(data + "\n")
                elif (ev := json.loads(data)).get("package", {}).get("matches"):
                    by_package.setdefault(package_name(ev["package"]), []).append(ev)
                    continue
                else:
                    out.write("\n".join(text_lines(ev)) + "\n")
                shown += 1
            for name, events in sorted(by_package.items()):
                if limit is not None and shown >= limit:
                    break
                out.write(
                    visible(f"changed by package {name}, matching the package database: ")
                    + f"{count(len(events), 'file')}\n"
                )
                for ev in events[: None if limit is None else limit - shown]:
                    out.write("\n".join("  " + line for line in text_lines(ev, False)) + "\n")
                    shown += 1
            left = sum(self.counts.values()) - shown
            if limit is not None and left > 0 and not self.job.json:
                out.write(f"... and {count(left, 'more finding')} (the summary counts them all)\n")
            if self.job.json:
                out.write(json.dumps(summary_event(summary, self.ecs)) + "\n")
            else:
                out.write(summary_text(summary))
            out.flush()
        except BrokenPipeError:
            # The reader (e.g. `| head`) stopped listening; the exit code still tells all.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())


# -- the daemon ---------------------------------------------------------------------------


def _watch(data: Connection, ctl: Connection, job: Job) -> None:
    """The daemon's collector: write each finding as it arrives, until Finish."""
    try:
        with ManifestStore.open(job.manifest, "read") as store, store.guard():
            # A damaged, foreign or forged manifest fails here, before the daemon says READY.
            _signature(store, job)
            _say_unrecorded(store)
            _say_unseen_trusted(store)
            trusted = store.trusted(with_dirs=False)
        live = _Live(job)
    except IntegritydError as e:
        ctl.send(_failure(e))
        return
    ctl.send(Ready(trusted))
    try:
        with guard(job.manifest):
            summary = live.receive(data, ctl)
        if summary is not None:
            ctl.send(summary)
    except Exception as e:
        ctl.send(_failure(e))
    finally:
        live.close()


_UNSTABLE = frozenset({"mtime_ns", "ctime_ns", "inode"})  # change with every write
_KEYED = [i for i, name in enumerate(RECORDED) if name not in _UNSTABLE]
# A directory's size and link count move with its entries, which have findings of their
# own (and nlink is not compared for directories: compare.py).
_KEYED_DIR = [i for i in _KEYED if RECORDED[i] not in ("nlink", "size")]


def _key(f: Finding) -> tuple[object, ...]:
    """What makes a finding new: the state it reports, but not times, which every write moves."""
    s = f.new
    if s is None:
        return (f.action,)
    recorded = s.recorded()
    keyed = _KEYED_DIR if s.type == "dir" else _KEYED
    return (f.action, *(recorded[i] for i in keyed), s.error_type)


def _recorded(s: FileState | None) -> tuple[object, ...] | None:
    return None if s is None else s.recorded()


def _digest(value: object) -> bytes:
    return hashlib.blake2b(pickle.dumps(value, pickle.HIGHEST_PROTOCOL), digest_size=16).digest()


class _Reported:
    """What was reported, per path that differs now.

    Digests of the baseline and the state, and when the task that saw that state began
    (``TaskResult.started``). On disk (a private temporary SQLite database), so that a storm
    that changes a million files costs disk, not memory.
    """

    def __init__(self) -> None:
        self._db = sqlite3.connect("", isolation_level=None)  # "": a temporary file
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        # KiB: bounded, whatever the count; 1 MiB, not 4: the daemon's summed RSS in a
        # storm has a bound of 150 MiB to keep (watch_bench.py), and a miss is a read of
        # the page cache
        self._db.execute("PRAGMA cache_size = -1024")
        self._db.execute(
            "CREATE TABLE reported "
            "(path BLOB PRIMARY KEY, baseline BLOB, state BLOB, seen REAL) WITHOUT ROWID"
        )
        self.count = 0

    def get(self, path: bytes) -> tuple[bytes, bytes, float] | None:
        if not self.count:
            return None  # the usual case while nothing differs: no query per file
        row = self._db.execute(
            "SELECT baseline, state, seen FROM reported WHERE path = ?", (path,)
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def put(self, path: bytes, baseline: bytes, state: bytes, seen: float, *, new: bool) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO reported VALUES (?, ?, ?, ?)", (path, baseline, state, seen)
        )
        self.count += new

    def drop(self, path: bytes) -> None:
        """Forget a path that ``get`` found."""
        self._db.execute("DELETE FROM reported WHERE path = ?", (path,))
        self.count -= 1

    def close(self) -> None:
        self._db.close()


class _Live:
    """Findings as they come, each distinct state once; a return to the baseline is ``restored``.

    ``reported`` holds, per path that differs now, the baseline it was compared with and
    the state reported, on disk.

    Reports do not arrive in the order their files were read: a scan's task reports when
    its budget is spent, and a live change read after it may report first. What a task
    that began before the reported state's task says of that path is older news and is
    dropped; otherwise a scan that read a file just before it was tampered with would
    follow the live ``modified`` with a ``restored``. Dropping an observation that was in
    fact newer loses nothing: the change that made it raised an event of its own. A path
    never reported has no such order (a stale finding for it is still reported).
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.ecs = Context()
        self.reader = BaselineReader(
            job.manifest,
            snapshot=False,
            key=job.verify_key,
            min_seq=job.min_seq,
            trusted=job.trusted,
        )
        self.reported = _Reported()
        self.packages = _attributor(job)
        self.counts: Counter[str] = Counter()
        self.per_scope: dict[int, tuple[int, int]] = {}  # scope -> (files, bytes), for metrics
        self.files = 0
        self.bytes = 0
        self.started = time.monotonic()

    def close(self) -> None:
        self.reader.close()
        self.reported.close()

    def receive(self, data: Connection, ctl: Connection) -> Summary | None:
        """Consume reports until Finish; None if the main process vanished first."""
        for msg in _messages(data):
            if isinstance(msg, TaskResult):
                self.report(msg)
            elif isinstance(msg, Ping):
                per_scope = tuple((i, f, b) for i, (f, b) in sorted(self.per_scope.items()))
                ctl.send(LiveStats(self.files, sum(self.counts.values()), per_scope))
            elif isinstance(msg, Job):
                if msg.packages != self.job.packages:
                    self.packages = _attributor(msg)
                self.job = msg  # reloaded: new roots, new output and log settings
                logsetup.configure(msg.log)
                log.debug("reconfigured", process="collector", pid=os.getpid())
            elif isinstance(msg, Finish):
                return self.summary()
        return None

    def report(self, r: TaskResult) -> None:
        self.files += r.files
        self.bytes += r.nbytes
        files, nbytes = self.per_scope.get(r.scope, (0, 0))
        self.per_scope[r.scope] = (files + r.files, nbytes + r.nbytes)
        for f in r.findings:
            self.finding(f, r.started)
        for path, kind, message in r.unreadable_dirs:
            self.finding(_unlisted(path, kind, message, self.reader.lookup(path)), r.started)
        for path in r.matched:
            self.matched(path, r.started)

    def finding(self, f: Finding, started: float) -> None:
        if f.new is not None and f.new.error_type == "changing":
            # Written while we read it: that write raised an event of its own, which
            # brings the file back once it settles. Reporting it now would be noise.
            return
        key = _key(f)
        state = _digest(key)
        before = self.reported.get(f.path)
        if before is not None and (started < before[2] or before[1] == state):
            return  # older news, or reported already: a file that stays different is not news
        self.reported.put(f.path, _digest(_recorded(f.old)), state, started, new=before is None)
        self.emit(f)

    def matched(self, path: bytes, started: float) -> None:
        before = self.reported.get(path)
        if before is None or started < before[2]:
            return
        self.reported.drop(path)
        baseline = self.reader.lookup(path)
        if _digest(_recorded(baseline)) == before[0]:  # not when the change was accepted meanwhile
            self.emit(Finding("restored", path, baseline, baseline))

    def emit(self, f: Finding) -> None:
        self.counts[f.action] += 1
        package = self.packages.package(f) if self.packages is not None else None
        e = event(f, "watch", self.ecs, package)
        out = sys.stdout
        if self.job.json:
            out.write(json.dumps(e, ensure_ascii=False) + "\n")
        else:
            stamp = time.strftime("%H:%M:%S ")
            out.write("\n".join(stamp + line for line in text_lines(e)) + "\n")
        out.flush()

    def summary(self) -> Summary:
        s = Summary(
            command="watch",
            files=self.files,
            bytes=self.bytes,
            seconds=time.monotonic() - self.started,
            counts=dict(self.counts),
            unverified=0,
            status=0,
            signature=self.reader.signature().event(),
        )
        sys.stdout.write(
            json.dumps(summary_event(s, self.ecs)) + "\n" if self.job.json else summary_text(s)
        )
        sys.stdout.flush()
        return s
