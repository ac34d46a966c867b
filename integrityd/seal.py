r"""The seal: what an Ed25519 signature over a baseline covers, and how a reader checks it.

What is covered, and how it is hashed (the definition a second implementation needs)::

    directory digest = SHA-256 of, for each run of up to 512 entries of the directory
                       in name order, pickle(list of rows): each row the tuple
                       (name, type, size, ..., xattrs) of RECORDED's columns as
                       SQLite returns them (bytes, str, int or None)
    baseline digest  = SHA-256 of pickle(("integrityd-baseline-1",
                       [(root path, options JSON, device), ...] in path order,
                       [(directory, directory digest, entries), ...] in path order))
    pickle           = Python's pickle protocol 3 in "fast" mode: no memo, so the
                       bytes depend on the values alone (tests/test_seal.py pins them)
    log hash (n)     = SHA-256 of log hash (n - 1) + the entry's JSON text (hash 0: 32 zeros)
    statement        = JSON of key ID, log sequence number and head, baseline digest,
                       entry count and time; the signature is over its exact text.

Not covered: what readers write (``verified_ns``, a root's verify cycle, timestamps of
the roots table), so that ``verify`` and ``watch`` record progress with only the public
key. A writer keeps the ``dirs`` table (one digest per directory) up to date; a reader
checks the statement's signature and the baseline digest (a pass over ``dirs`` and
``roots``, one row per directory) once per snapshot, then checks each directory's
entries as it reads them, against that directory's digest. So a ``check`` pays a hash
of rows it fetches anyway, and ``check PATH`` of a subtree checks only the directories
it reads. A writer checks every directory before it changes anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import pickle
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from integrityd.errors import SignatureError
from integrityd.keys import PublicKey
from integrityd.messages import RECORDED
from integrityd.paths import split

FORMAT = "integrityd-seal-1"
BASELINE_TAG = "integrityd-baseline-1"
STATEMENT = "seal"  # meta keys: the signed statement, and its signature (base64)
SIGNATURE = "seal_signature"
DIRS_KEPT = "dirs_kept"  # meta: the dirs table is complete (set by a writer that rebuilt it)
ZERO = bytes(32)
COLUMNS = ", ".join(("name", *RECORDED))  # a directory digest's row, in order

State = Literal["valid", "unchecked", "unsigned"]
Row = tuple[Any, ...]


RUN = 512  # rows per pickle in a directory digest: a huge directory in bounded memory


class Encoder:
    """Values as pickle protocol 3 without a memo: the same values, the same bytes.

    A memo would make the bytes depend on which values happen to be one object
    (sqlite3 returns the same object for equal one-character strings, for one). Pickle
    rather than a text form: the whole list is encoded in C, at a quarter of the cost
    of ascii() of each row (40 against 170 ms for 100,000 rows on the development VM),
    and a reader pays it for every directory it reads. One pickler serves every call
    (without a memo it keeps nothing from one to the next): making one cost as much as
    encoding a directory of two files.
    """

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._pickler = pickle.Pickler(self._buf, protocol=3)
        self._pickler.fast = True

    def encode(self, value: object) -> bytes:
        """The bytes of ``value``."""
        self._buf.seek(0)
        self._buf.truncate()
        self._pickler.dump(value)
        return self._buf.getvalue()

    def dir_digest(self, rows: list[Row]) -> bytes:
        """The digest of one directory's entries, given in name order."""
        if len(rows) <= RUN:
            return hashlib.sha256(self.encode(rows)).digest()
        h = hashlib.sha256()
        for i in range(0, len(rows), RUN):
            h.update(self.encode(rows[i : i + RUN]))
        return h.digest()


def pickled(value: object) -> bytes:
    """``Encoder.encode`` with an encoder of its own."""
    return Encoder().encode(value)


def dir_digest(rows: list[Row]) -> bytes:
    """``Encoder.dir_digest`` with an encoder of its own."""
    return Encoder().dir_digest(rows)


class StreamedDigest:
    """``dir_digest`` of rows fed one at a time: a huge directory, in bounded memory."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._run: list[Row] = []
        self.count = 0

    def add(self, row: Row) -> None:
        """Feed the next row in name order."""
        self._run.append(row)
        self.count += 1
        if len(self._run) == RUN:
            self._h.update(pickled(self._run))
            self._run = []

    def digest(self) -> bytes:
        """The digest of the rows fed so far."""
        h = self._h.copy()
        if self._run:
            h.update(pickled(self._run))
        return h.digest()


def baseline_digest(roots: list[Row], dirs: list[Row]) -> bytes:
    """The baseline digest of (path, options, device) roots and (dir, digest, count) dirs."""
    return hashlib.sha256(pickled((BASELINE_TAG, roots, dirs))).digest()


def chain(prev: bytes, entry: str) -> bytes:
    """The hash of a log entry whose predecessor's hash is ``prev``."""
    return hashlib.sha256(prev + entry.encode()).digest()


@dataclass(frozen=True, slots=True)
class Statement:
    """What a signature says: this key vouches for this baseline and log head."""

    key_id: str
    seq: int
    log_head: str  # hex
    baseline_sha256: str  # hex
    entries: int
    signed_at: str  # ISO 8601, UTC

    def text(self) -> str:
        """The exact text that is signed (and stored)."""
        fields = {
            "format": FORMAT,
            "algorithm": "ed25519",
            "key_id": self.key_id,
            "seq": self.seq,
            "log_head": self.log_head,
            "baseline_sha256": self.baseline_sha256,
            "entries": self.entries,
            "signed_at": self.signed_at,
        }
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str, where: str) -> Statement:
        """The statement stored as ``text``; a damaged one is a SignatureError."""
        try:
            d = json.loads(text)
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r}")
            return cls(
                key_id=str(d["key_id"]),
                seq=int(d["seq"]),
                log_head=str(d["log_head"]),
                baseline_sha256=str(d["baseline_sha256"]),
                entries=int(d["entries"]),
                signed_at=str(d["signed_at"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SignatureError(f"{where}: its signature statement is unreadable ({e})") from e


@dataclass(frozen=True, slots=True)
class Info:
    """What a summary says about the signature (``signature`` in the JSON summary)."""

    state: State
    key_id: str | None = None
    seq: int = 0
    baseline_sha256: str | None = None
    signed_at: str | None = None

    def event(self) -> dict[str, object]:
        """The summary's ``signature`` object."""
        return {
            "state": self.state,
            "key_id": self.key_id,
            "seq": self.seq,
            "baseline_sha256": self.baseline_sha256,
            "signed_at": self.signed_at,
        }


@dataclass(frozen=True, slots=True, eq=False)
class Trusted:
    """What the collector checked, for the workers it starts before they read anything.

    A worker that finds ``statement`` in its own snapshot need not check its signature
    again, nor import cryptography to do so; with ``dirs`` (the directory digests the
    collector checked against it) it need not hash the ``dirs`` table either, and its
    rows must match those digests: any change of a row or a digest since is found, and
    a writer's commit meanwhile changes the statement, which sends the worker through
    the whole check again. The daemon passes no ``dirs``: they would go through a pipe
    to every worker it starts, and be stale after the first accept.
    """

    statement: str
    dirs: dict[bytes, tuple[bytes, int]] | None = None


def now_iso() -> str:
    """The current time as the log and the statement write it."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


# -- reading the sealed tables -----------------------------------------------------------


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the manifest has ``name`` (a reader of an older schema may lack it)."""
    sql = "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?"
    return conn.execute(sql, (name,)).fetchone() is not None


def log_rows(conn: sqlite3.Connection) -> list[tuple[int, str, bytes]]:
    """(seq, entry, hash) of every change log entry, oldest first."""
    if not has_table(conn, "log"):
        return []
    return conn.execute("SELECT seq, entry, hash FROM log ORDER BY seq").fetchall()


def log_head(conn: sqlite3.Connection) -> tuple[int, bytes]:
    """(seq, hash) of the newest log entry; (0, zeros) for none."""
    if not has_table(conn, "log"):
        return 0, ZERO
    row = conn.execute("SELECT seq, hash FROM log ORDER BY seq DESC LIMIT 1").fetchone()
    return (int(row[0]), bytes(row[1])) if row else (0, ZERO)


def check_chain(conn: sqlite3.Connection, where: str) -> tuple[int, bytes]:
    """(seq, hash) of the newest entry, having checked every link; a break is an error."""
    return check_chain_rows(log_rows(conn), where)


def check_chain_rows(rows: Iterable[tuple[int, str, bytes]], where: str) -> tuple[int, bytes]:
    """``check_chain`` of (seq, entry, hash) rows, oldest first."""
    prev, seq = ZERO, 0
    for n, entry, stored in rows:
        problem = None
        if n != seq + 1:
            problem = f"entry {seq + 1} is missing (the next is {n})"
        elif chain(prev, entry) != stored:
            problem = f"entry {n} was changed after it was written"
        else:
            try:
                d = json.loads(entry)
                if d.get("seq") != n or d.get("prev") != prev.hex():
                    problem = f"entry {n} does not follow entry {seq}"
            except ValueError:
                problem = f"entry {n} is not JSON"
        if problem:
            raise SignatureError(f"{where}: the change log is broken: {problem}")
        prev, seq = bytes(stored), n
    return seq, prev


def roots_rows(conn: sqlite3.Connection) -> list[Row]:
    """The roots as the baseline digest covers them."""
    return conn.execute("SELECT path, options, device FROM roots ORDER BY path").fetchall()


def dirs_rows(conn: sqlite3.Connection) -> list[Row]:
    """The directory digests as stored, in path order."""
    if not has_table(conn, "dirs"):
        return []
    return conn.execute("SELECT parent, digest, count FROM dirs ORDER BY parent").fetchall()


def computed_dirs(conn: sqlite3.Connection) -> Iterator[Row]:
    """(directory, digest, count) computed from every entry: a writer's full check."""
    sql = f"SELECT parent, {COLUMNS} FROM files ORDER BY parent, name"
    parent: bytes | None = None
    rows: list[Row] = []
    for r in conn.execute(sql):
        if r[0] != parent:
            if rows:
                yield parent, dir_digest(rows), len(rows)
            parent, rows = r[0], []
        rows.append(r[1:])
    if rows:
        yield parent, dir_digest(rows), len(rows)


def describe(conn: sqlite3.Connection) -> Info:
    """The signature as recorded, unchecked: for a reader without a public key."""
    text = _meta(conn, STATEMENT)
    seq, _ = log_head(conn)
    if text is None:
        return Info("unsigned", seq=seq, baseline_sha256=_last_baseline(conn))
    s = Statement.parse(text, "manifest")
    return Info("unchecked", s.key_id, s.seq, s.baseline_sha256, s.signed_at)


def _last_baseline(conn: sqlite3.Connection) -> str | None:
    """The baseline digest the newest log entry recorded (unsigned manifests)."""
    for _, entry, _ in _newest(conn):
        value = json.loads(entry).get("baseline_sha256")
        return str(value) if value else None
    return None


def _newest(conn: sqlite3.Connection) -> list[tuple[int, str, bytes]]:
    if not has_table(conn, "log"):
        return []
    return conn.execute("SELECT seq, entry, hash FROM log ORDER BY seq DESC LIMIT 1").fetchall()


def statement_text(conn: sqlite3.Connection) -> str | None:
    """The statement as stored."""
    return _meta(conn, STATEMENT)


def is_signed(conn: sqlite3.Connection) -> Statement | None:
    """The stored statement, unchecked; None for an unsigned manifest."""
    text = _meta(conn, STATEMENT)
    return None if text is None else Statement.parse(text, "manifest")


class Checker:
    """Checks one connection's view of a sealed baseline against a public key.

    ``top`` checks the statement's signature and the baseline digest (roots and the
    directory digests); ``entries`` then checks one directory's rows against its digest.
    What was checked holds while SQLite's ``data_version`` stays the same: within a
    snapshot, always; without one (the daemon), until another connection commits.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        key: PublicKey,
        name: str,
        min_seq: int,
        *,
        trusted: Trusted | None = None,
        snapshot: bool = False,
    ) -> None:
        # ``trusted``: what was checked already (by the collector, or by this checker
        # before): see Trusted. ``snapshot``: the connection reads one snapshot, which
        # never changes: no need to ask SQLite whether it did.
        self.trusted = trusted
        self.snapshot = snapshot
        self.encoder = Encoder()
        self.conn = conn
        self.key = key
        self.name = name
        self.min_seq = min_seq
        self._version: int | None = None
        self._dirs: dict[bytes, tuple[bytes, int]] = {}
        self._ok: set[bytes] = set()
        self.statement: Statement | None = None

    def info(self) -> Info:
        """The checked signature, for the summary."""
        s = self.fresh()
        return Info("valid", s.key_id, s.seq, s.baseline_sha256, s.signed_at)

    def handover(self) -> Trusted:
        """What this checker checked, for the workers (after ``top``)."""
        assert self.trusted is not None
        return Trusted(self.trusted.statement, self._dirs)

    def fresh(self) -> Statement:
        """Check the top again if the manifest changed since it was last checked."""
        if self.snapshot and self.statement is not None:
            return self.statement
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version or self.statement is None:
            self._ok.clear()
            self.statement = self.top()
            self._version = version
        return self.statement

    def _by(self, s: Statement) -> str:
        return f"signed by key {s.key_id} on {s.signed_at}"

    def top(self, chain_too: bool = False) -> Statement:
        """Check the signature and the baseline digest; ``chain_too``: every log link too."""
        text = _meta(self.conn, STATEMENT)
        if text is None:
            msg = (
                f"manifest {self.name} is not signed, and a public key ({self.key.id}) was "
                "given: an unsigned baseline cannot be trusted where a signed one is "
                "expected (sign it with 'integrityd accept --all --sign-key KEY')"
            )
            raise SignatureError(msg)
        s = Statement.parse(text, f"manifest {self.name}")
        if s.key_id != self.key.id:
            msg = (
                f"manifest {self.name} is {self._by(s)}, not by the given key {self.key.id}: "
                "a baseline signed by another key is not trusted"
            )
            raise SignatureError(msg)
        t = self.trusted
        if t is None or text != t.statement:
            self._signed(text, s)
            self.trusted = Trusted(text)
        if s.seq < self.min_seq:
            msg = (
                f"manifest {self.name} is at change {s.seq} ({self._by(s)}), older than the "
                f"minimum {self.min_seq}: an older signed baseline was put back"
            )
            raise SignatureError(msg)
        if t is not None and text == t.statement and t.dirs is not None and not chain_too:
            self._dirs = t.dirs
            return s
        seq, head = (
            check_chain(self.conn, f"manifest {self.name}") if chain_too else (log_head(self.conn))
        )
        if (seq, head.hex()) != (s.seq, s.log_head):
            msg = (
                f"manifest {self.name}: its change log ends at entry {seq}, not at the entry "
                f"{s.seq} that was {self._by(s)}: log entries were removed or added outside "
                "integrityd"
            )
            raise SignatureError(msg)
        dirs = dirs_rows(self.conn)
        if baseline_digest(roots_rows(self.conn), dirs).hex() != s.baseline_sha256:
            raise SignatureError(self._changed(s, "its roots or directories"))
        self._dirs = {bytes(p): (bytes(d), int(n)) for p, d, n in dirs}
        return s

    def _signed(self, text: str, s: Statement) -> None:
        """Check the statement's signature."""
        try:
            signature = base64.b64decode(_meta(self.conn, SIGNATURE) or "", validate=True)
        except binascii.Error:
            signature = b""
        if not self.key.verifies(signature, text.encode()):
            msg = (
                f"manifest {self.name}: its signature statement ({self._by(s)}) does not "
                "carry that key's signature: it was written outside integrityd"
            )
            raise SignatureError(msg)

    def _changed(self, s: Statement, what: str) -> str:
        return (
            f"manifest {self.name}: {what} do not match the baseline {self._by(s)}: "
            "the baseline was changed outside integrityd"
        )

    def entries(self, parent: bytes, rows: list[Row]) -> None:
        """Check all of ``parent``'s rows (name order), as fetched by the caller."""
        s = self.fresh()
        if parent in self._ok:
            return
        want = self._dirs.get(parent)
        if (want is not None) if not rows else want != (self.encoder.dir_digest(rows), len(rows)):
            raise SignatureError(self._changed(s, f"the entries of {_show(parent)}"))
        self._ok.add(parent)

    def directory(self, parent: bytes) -> None:
        """Check ``parent``'s rows, fetching them (streamed: a directory may be huge)."""
        self.fresh()
        if parent in self._ok:
            return
        d = StreamedDigest()
        sql = f"SELECT {COLUMNS} FROM files WHERE parent = ? ORDER BY name"
        for r in self.conn.execute(sql, (parent,)):
            d.add(r)
        want = self._dirs.get(parent)
        if (want is None and d.count) or (want is not None and want != (d.digest(), d.count)):
            raise SignatureError(self._changed(self.fresh(), f"the entries of {_show(parent)}"))
        self._ok.add(parent)

    def below(self, directory: bytes, parents: Iterable[bytes]) -> None:
        """Check every directory below ``directory``: those recorded and those with rows."""
        base = directory.rstrip(b"/")
        lo, hi = base + b"/", base + b"0"
        recorded = {p for p in self._dirs if p == directory or lo <= p < hi}
        for parent in sorted(recorded | set(parents)):
            self.directory(parent)

    def counts(self, starts: Iterable[bytes]) -> None:
        """Check how many entries each directory in these subtrees holds.

        An index-only pass (20 ms for 100,000 entries on the development VM): an entry
        deleted or inserted is found even where no worker reads its directory, as
        ``verify`` reads only the files it is due to re-hash, and a deleted entry is a
        file it would never re-hash again.
        """
        s = self.fresh()
        for start in starts:
            parent = split(start)[0]
            base = start.rstrip(b"/")
            lo, hi = base + b"/", base + b"0"
            sql = (
                "SELECT parent, count(*) FROM files "
                "WHERE parent = ? OR parent = ? OR (parent >= ? AND parent < ?) GROUP BY parent"
            )
            have = {bytes(p): int(n) for p, n in self.conn.execute(sql, (parent, start, lo, hi))}
            want = {
                p: n for p, (_, n) in self._dirs.items() if p in (parent, start) or lo <= p < hi
            }
            if have != want:
                bad = sorted(set(have.items()) ^ set(want.items()))[0][0]
                raise SignatureError(self._changed(s, f"the entries of {_show(bad)}"))

    def everything(self) -> None:
        """Every directory, from every row: what a writer checks before it signs again."""
        s = self.top(chain_too=True)
        computed = {bytes(p): (d, n) for p, d, n in computed_dirs(self.conn)}
        if computed != self._dirs:
            bad = sorted(set(computed.items()) ^ set(self._dirs.items()))[0][0]
            raise SignatureError(self._changed(s, f"the entries of {_show(bad)}"))
        self._ok.update(computed)


def _show(path: bytes) -> str:
    return os.fsdecode(path) or "/"
