"""The manifest: baselines of any number of roots in one SQLite file.

Paths are stored as bytes, so non-UTF-8 names survive. Writers (init, accept) hold one
IMMEDIATE transaction for the whole run: the previous baseline stays exactly as it was
until the final commit, whatever happens before it (Ctrl-C, kill -9, a full disk), and
a second writer is turned away with ``ManifestLocked`` instead of waiting for minutes.
WAL mode lets ``check`` and the hash workers read while a writer works.

Entries are keyed by (parent directory, name), so that a directory's baseline is one
range scan: each hash worker compares whole directories against the baseline through a
read-only ``BaselineReader``, and only the differences travel on to the collector.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any, Self

from integrityd import seal
from integrityd.config import DEFAULT_CHECK, RootConfig, Rule
from integrityd.errors import ManifestCorrupt, ManifestError, ManifestLocked, SignatureError
from integrityd.keys import PublicKey, SigningKey
from integrityd.messages import RECORDED, FileState
from integrityd.paths import join, split
from integrityd.policy import Mode
from integrityd.writers import refuse_if_changeable

# Python's sqlite3 binds int, float and str directly, but looks for an adapter for any other
# type, and a failed look-up raises and discards an AttributeError: about 1.3 µs for every
# bytes or None parameter, most of what a manifest row costs to insert. An adapter that
# returns its argument unchanged turns that into one dict look-up. Registering is
# process-wide, idempotent, and changes no stored value.
sqlite3.register_adapter(bytes, bytes)
sqlite3.register_adapter(type(None), lambda _: None)

APPLICATION_ID = int.from_bytes(b"ITGD", "big")
SCHEMA_VERSION = 4
_ADDED_IN_3 = (
    ("nlink", "INTEGER"), ("rdev", "INTEGER"), ("flags", "INTEGER"), ("caps", "BLOB"),
    ("acl", "TEXT"), ("selinux", "TEXT"), ("xattrs", "TEXT"),
)  # fmt: skip
# Entries written before schema 3 (nlink is NULL only there): empty once all are accepted
# again, so asking whether any are left costs nothing.
_UNRECORDED_INDEX = "CREATE INDEX IF NOT EXISTS unrecorded ON files (parent) WHERE nlink IS NULL"
_OLD_DEFAULT_CHECK = '["content","type","mode","uid","gid","target"]'
_NEW_DEFAULT_CHECK = json.dumps(list(DEFAULT_CHECK), separators=(",", ":"))


def _step_3(conn: sqlite3.Connection) -> tuple[str, ...]:
    """The attributes an intruder changes without touching content.

    Old entries hold NULL: not recorded, not compared until accepted again. A root that
    had the old default check gets the new default: nobody chose to leave these out. A
    reader that may not write reads the old table through a view (``_compat_view``).
    Columns that exist already are not added again.
    """
    have = {r[1] for r in conn.execute("PRAGMA main.table_info(files)")}
    return (
        *(f"ALTER TABLE files ADD COLUMN {c} {t}" for c, t in _ADDED_IN_3 if c not in have),
        _UNRECORDED_INDEX,
        "UPDATE roots SET options = "
        f"json_set(options, '$.check', json('{_NEW_DEFAULT_CHECK}')) "
        f"WHERE json_extract(options, '$.check') = '{_OLD_DEFAULT_CHECK}'",
    )


# Each step takes a manifest from the version before it to this one, all steps in one
# transaction: an interrupted upgrade leaves the old manifest as it was. Each step is
# (its statements, a query that finds a row a reader could not do without).
_MIGRATIONS: dict[int, tuple[Callable[[sqlite3.Connection], tuple[str, ...]], str]] = {
    # 2: the entry of a root of "/" moves from ("/", "") to ("", "/") (see ``split``).
    2: (
        lambda _: (
            "UPDATE files SET parent = x'', name = x'2f' WHERE parent = x'2f' AND name = x''",
        ),
        "SELECT 1 FROM files WHERE parent = x'2f' AND name = x''",
    ),
    3: (_step_3, "SELECT 1 WHERE 0"),
    # 4: the seal (seal.py): a digest per directory, and the change log.
    4: (lambda _: (_DIRS, _LOG), "SELECT 1 WHERE 0"),
}
LOCK_TIMEOUT_S = 3.0
_SQLITE_MAGIC = b"SQLite format 3\x00"
_STATE = ", ".join(RECORDED)  # the recorded columns, in FileState's order
_DIRS = """CREATE TABLE IF NOT EXISTS dirs (
    parent BLOB PRIMARY KEY, digest BLOB NOT NULL, count INTEGER NOT NULL
) WITHOUT ROWID"""
_LOG = """CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY, entry TEXT NOT NULL, hash BLOB NOT NULL
)"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roots (
    path BLOB PRIMARY KEY, options TEXT NOT NULL, device INTEGER,
    created_ns INTEGER NOT NULL, updated_ns INTEGER NOT NULL,
    cycle_ns INTEGER NOT NULL DEFAULT 0  -- when the current verify cycle began
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    parent BLOB NOT NULL, name BLOB NOT NULL, type TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
    mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
    sha256 BLOB, target BLOB,
    nlink INTEGER, rdev INTEGER, flags INTEGER, caps BLOB, acl TEXT, selinux TEXT, xattrs TEXT,
    verified_ns INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;
{_UNRECORDED_INDEX};
{_DIRS};
{_LOG};
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
"""

_TEMP = """
CREATE TEMP TABLE findings (path BLOB NOT NULL, data TEXT NOT NULL);
"""

Blob = bytes | bytearray
Row = tuple[object, ...]
"""A manifest row as written: (parent, name, then the RECORDED fields)."""


def journal_files(path: bytes) -> frozenset[bytes]:
    """The manifest and the files SQLite keeps beside it; never reported as changes."""
    return frozenset({path} | {path + s for s in SIDE_FILES})


def row(parent: bytearray, name: bytes, state: FileState) -> Row:
    """The row that records ``state`` as the entry ``name`` in the directory ``parent``.

    Its BLOB values are bytearrays: sqlite3 binds a bytearray as it is, but passes every
    bytes value through an adapter first (see ``register_adapter`` above). The rows are
    made by the hash workers and written by the one collector: for ``init`` of 100,000
    small files on the development VM this cut the collector's CPU from 1.05 to 0.78 s
    and cost the workers about 0.4 µs a row. ``parent`` is made once per directory by
    the caller, so that a directory's rows share it (and pickle it once).
    """
    s = state
    return (
        parent, bytearray(name), s.type, s.size, s.mtime_ns, s.ctime_ns, s.inode, s.mode,
        s.uid, s.gid,
        None if s.sha256 is None else bytearray(s.sha256),
        None if s.target is None else bytearray(s.target),
        s.nlink, s.rdev, s.flags,
        None if s.caps is None else bytearray(s.caps),
        s.acl, s.selinux, s.xattrs,
    )  # fmt: skip


_IN_LIMIT = 500  # names per IN (...): far below SQLite's limit on bound parameters

_BELOW = "(parent = ? OR (parent >= ? AND parent < ?))"


def _below(directory: bytes) -> tuple[bytes, bytes, bytes]:
    # '0' sorts right after '/', so [dir/, dir0) holds exactly the deeper parents.
    base = directory.rstrip(b"/")
    return directory, base + b"/", base + b"0"


_SUBTREE = f"((parent = ? AND name = ?) OR {_BELOW})"


def _subtree(start: bytes) -> tuple[bytes, ...]:
    """Parameters of ``_SUBTREE``: ``start`` itself and everything below it."""
    return (*split(start), *_below(start))


def _states(conn: sqlite3.Connection, where: str, params: tuple[bytes, ...]) -> Iterator[FileState]:
    """Baseline entries matching ``where``, in path order."""
    sql = f"SELECT parent, name, {_STATE} FROM files WHERE {where} ORDER BY parent, name"
    for row in conn.execute(sql, params):
        parent, name, *recorded = row
        yield FileState.from_recorded(join(parent, name), recorded)


def sqlite_error(path: bytes, e: sqlite3.Error) -> ManifestError:
    """SQLite's error on the manifest ``path`` as ours: locked, damaged, or otherwise."""
    name = os.fsdecode(path)
    text = str(e)
    if "locked" in text or "busy" in text:
        return ManifestLocked(f"manifest {name} is locked by another integrityd writer")
    if isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.OperationalError):
        return ManifestCorrupt(f"manifest {name} is damaged ({text}); it was left untouched")
    return ManifestError(f"manifest {name}: {text}")


class ManifestStore:
    """One open manifest; use as a context manager. Uncommitted work is rolled back."""

    def __init__(self, path: bytes, conn: sqlite3.Connection, writable: bool) -> None:
        self.path = path
        self.writable = writable
        self._conn = conn
        self._now = time.time_ns()
        # What this run wrote and deleted: the directories whose digests change (seal.py).
        self._touched: set[bytes] = set()
        self._cleared: list[bytes] = []
        self._checker: seal.Checker | None = None  # the last signature() with a key

    @classmethod
    def open(cls, path: bytes, mode: Mode) -> Self:
        """Open (or, for ``create``, make) the manifest and, for writers, take its lock.

        ``read`` and ``progress`` work on a manifest this user may not write, or on a
        read-only filesystem (see ``connect_read``); ``writable`` then says False.
        """
        name = os.fsdecode(path)
        refuse_unsafe(path)
        fresh = _check_header(path, mode)
        if mode == "create":
            parent = os.path.dirname(path)
            try:
                # It lists every file of the host: a directory made for it is ours alone.
                os.makedirs(parent, mode=0o700, exist_ok=True)
                if fresh:
                    _create_private(path)
            except OSError as e:
                msg = f"cannot create the manifest {name}: {e.strerror}"
                raise ManifestError(msg) from e
        try:
            conn = sqlite3.connect(path, timeout=LOCK_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise ManifestError(f"cannot open manifest {name}: {e}") from e
        store = cls(path, conn, writable=mode != "read")
        try:
            store._start(fresh, mode)
        except sqlite3.Error as e:
            conn.close()
            if mode in ("read", "progress") and _cannot_write(e):
                return cls._read_only(path)
            raise sqlite_error(path, e) from e
        except ManifestError:
            conn.close()
            raise
        return store

    @classmethod
    def _read_only(cls, path: bytes) -> Self:
        """The manifest through ``connect_read``: for a user or filesystem that may not write."""
        store = cls(path, connect_read(path), writable=False)
        try:
            store._start(False, "read")
        except sqlite3.Error as e:
            store.close()
            raise sqlite_error(path, e) from e
        except ManifestError:
            store.close()
            raise
        return store

    def _start(self, fresh: bool, mode: Mode) -> None:
        c = self._conn
        c.execute(
            "PRAGMA synchronous = NORMAL"
        )  # WAL: a power cut may lose the last run, never the file
        if mode == "create" and fresh:
            c.execute("PRAGMA journal_mode = WAL")
        c.execute("BEGIN IMMEDIATE" if self.writable else "BEGIN")
        app_id = c.execute("PRAGMA application_id").fetchone()[0]
        if app_id != APPLICATION_ID:
            tables = c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables or mode != "create":
                name = os.fsdecode(self.path)
                msg = f"{name} is not an integrityd manifest; it was left untouched"
                raise ManifestCorrupt(msg if tables else f"{name} holds no baseline yet")
            # Commit the empty schema at once, so that the workers' readers can open it;
            # the baseline itself still arrives in one transaction.
            _run_script(c, _SCHEMA)
            c.execute("COMMIT")
            c.execute("BEGIN IMMEDIATE")
        refuse_foreign_schema(c, self.path)
        version = c.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            msg = f"manifest {os.fsdecode(self.path)} was written by a newer integrityd"
            raise ManifestCorrupt(f"{msg} (schema {version} > {SCHEMA_VERSION})")
        if version < SCHEMA_VERSION:
            self._upgrade(version)
        _run_script(c, _TEMP)

    def _upgrade(self, version: int) -> None:
        """Bring a manifest of an older schema up to date, in a transaction of its own.

        Committed before the run's own transaction begins, so that the workers' readers,
        which open the manifest after this, see the upgraded rows. A reader that may not
        write the file goes on with the old schema where no step would change a row.
        """
        c = self._conn
        c.execute("COMMIT")
        try:
            c.execute("BEGIN IMMEDIATE")
            version = c.execute("PRAGMA user_version").fetchone()[0]  # maybe upgraded meanwhile
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step][0](c):
                    c.execute(statement)
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            c.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            if self.writable or not _cannot_write(e):
                raise
            c.execute("BEGIN")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                if c.execute(_MIGRATIONS[step][1]).fetchone():
                    msg = (
                        f"manifest {os.fsdecode(self.path)} needs an upgrade from schema "
                        f"{version} to {SCHEMA_VERSION}, and this user may not write it; "
                        "run integrityd once as a user who may"
                    )
                    raise ManifestError(msg) from None
            _compat_view(c)
            return
        c.execute("BEGIN IMMEDIATE" if self.writable else "BEGIN")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close, rolling back anything not committed."""
        self._conn.close()

    def commit(self, reopen: bool = False) -> None:
        """Make this run's writes the new baseline, atomically; ``reopen`` keeps the lock."""
        try:
            self._conn.execute("COMMIT")
            if reopen:
                self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise sqlite_error(self.path, e) from e

    def mark_verified(self, entries: list[tuple[bytes, bytes]]) -> None:
        """Record that these (parent, name) entries were read and compared now.

        One statement per directory: verify's batches come sorted by directory, and a
        statement per entry cost the collector about twice as much.
        """
        by_parent: dict[bytes, list[bytes]] = {}
        for parent, name in entries:
            by_parent.setdefault(parent, []).append(name)
        now = time.time_ns()
        for parent, names in by_parent.items():
            for i in range(0, len(names), _IN_LIMIT):
                chunk = names[i : i + _IN_LIMIT]
                self._conn.execute(
                    f"UPDATE files SET verified_ns = {now} "
                    f"WHERE parent = ? AND name IN ({', '.join('?' * len(chunk))})",
                    (parent, *chunk),
                )

    def by_verification_age(
        self, start: bytes, before: int | None = None
    ) -> Iterator[tuple[bytes, int]]:
        """(path, size) of the regular files below ``start``, least recently verified first.

        With ``before``, only files last verified before that time.
        """
        sql = (
            "SELECT parent, name, size FROM files WHERE type = 'file' AND verified_ns < ? AND "
            f"{_SUBTREE} ORDER BY verified_ns, parent, name"
        )
        limit = before if before is not None else (1 << 63) - 1  # SQLite's largest integer
        for parent, name, size in self._conn.execute(sql, (limit, *_subtree(start))):
            yield join(parent, name), size

    def count_due(self, start: bytes, before: int) -> int:
        """Regular files below ``start`` last verified before ``before``."""
        sql = f"SELECT count(*) FROM files WHERE type = 'file' AND verified_ns < ? AND {_SUBTREE}"
        return int(self._conn.execute(sql, (before, *_subtree(start))).fetchone()[0])

    def cycle_start(self, root: bytes) -> int:
        """When the current verify cycle of ``root`` began (0: none yet)."""
        row = self._conn.execute("SELECT cycle_ns FROM roots WHERE path = ?", (root,)).fetchone()
        return int(row[0]) if row else 0

    def start_cycle(self, root: bytes, ns: int) -> None:
        """Begin a new verify cycle for ``root``: every file is due again."""
        self._conn.execute("UPDATE roots SET cycle_ns = ? WHERE path = ?", (ns, root))

    def verification_stats(self, start: bytes) -> tuple[int, int | None]:
        """(regular files below ``start``, the oldest verified_ns among them)."""
        sql = f"SELECT count(*), min(verified_ns) FROM files WHERE type = 'file' AND {_SUBTREE}"
        count, oldest = self._conn.execute(sql, _subtree(start)).fetchone()
        return int(count), oldest

    def unrecorded(self) -> int:
        """Entries recorded before integrityd read nlink, rdev and attributes.py's fields."""
        sql = "SELECT count(*) FROM files WHERE nlink IS NULL"  # the index "unrecorded"
        return int(self._conn.execute(sql).fetchone()[0])

    def with_trusted_xattrs(self) -> int:
        """Entries whose recorded xattrs include a ``trusted.*`` name (a scan of the table)."""
        sql = "SELECT count(*) FROM files WHERE instr(xattrs, '\"trusted.') > 0"
        return int(self._conn.execute(sql).fetchone()[0])

    def root_devices(self) -> dict[bytes, int]:
        """The st_dev each root was on when it was baselined."""
        return dict(self._conn.execute("SELECT path, device FROM roots").fetchall())

    def guard(self) -> _Guard:
        """Context that turns SQLite errors into ManifestError subclasses."""
        return _Guard(self.path)

    # -- roots ---------------------------------------------------------------------------

    def roots(self) -> list[RootConfig]:
        """The roots this manifest holds baselines for, with the options they were made with."""
        rows = self._conn.execute("SELECT path, options FROM roots ORDER BY path").fetchall()
        out = []
        for path, options in rows:
            o = json.loads(options)
            try:
                root = RootConfig(
                    path=path,
                    exclude=tuple(o.get("exclude", ())),
                    check=tuple(o.get("check", DEFAULT_CHECK)),
                    rules=tuple(
                        Rule(match=r["match"], check=tuple(r["check"])) for r in o.get("rules", ())
                    ),
                    one_filesystem=bool(o.get("one_filesystem", True)),
                    workers=o.get("workers"),
                )
            except ValueError as e:  # stored by an older integrityd, whose rules differed
                msg = (
                    f"manifest {os.fsdecode(self.path)}: root {os.fsdecode(path)}: {e}; "
                    "give the root with corrected options in a config (-c)"
                )
                raise ManifestError(msg) from e
            out.append(root)
        return out

    def put_root(self, root: RootConfig, device: int) -> None:
        """Record (or update) a root and the options its baseline was made with."""
        options = {k: v for k, v in asdict(root).items() if k != "path"}
        self._conn.execute(
            "INSERT INTO roots VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT(path) DO UPDATE SET "
            "options = excluded.options, device = excluded.device, "
            "updated_ns = excluded.updated_ns",
            (root.path, json.dumps(options), device, self._now, self._now),
        )

    # -- baseline entries ----------------------------------------------------------------

    def write(self, rows: list[Row]) -> None:
        """Store entries as the new baseline (at commit)."""
        self._conn.executemany(
            f"INSERT OR REPLACE INTO files (parent, name, {_STATE}, verified_ns) "
            f"VALUES ({', '.join('?' * (2 + len(RECORDED)))}, {self._now})",
            rows,
        )
        self._touched.update({bytes(r[0]) for r in rows})  # type: ignore[call-overload]

    def delete(self, paths: list[bytes]) -> None:
        """Drop entries and everything below them from the baseline (at commit)."""
        for path in paths:
            self._conn.execute(f"DELETE FROM files WHERE {_SUBTREE}", _subtree(path))
            self._touched.add(split(path)[0])
            self._cleared.append(path)

    # -- the seal (seal.py) --------------------------------------------------------------

    def signature(
        self,
        key: PublicKey | None,
        min_seq: int = 0,
        everything: bool = False,
        starts: Sequence[bytes] = (),
    ) -> seal.Info:
        """The baseline's signature, checked with ``key`` if there is one.

        Checks the statement, the log chain, the baseline digest and how many entries
        each directory below ``starts`` holds; the entries themselves are checked by
        whoever reads them (``BaselineReader``), or here, with ``everything``. Without
        a key only ``min_seq`` is checked: a reader learns the state, never a verdict.
        """
        name = os.fsdecode(self.path)
        if key is not None:
            checker = seal.Checker(self._conn, key, name, min_seq)
            self._checker = checker
            if everything:
                checker.everything()
            else:
                checker.top(chain_too=True)
                checker.counts(starts)
            return checker.info()
        info = seal.describe(self._conn)
        if info.seq < min_seq:
            msg = (
                f"manifest {name} is at change {info.seq}, older than the minimum {min_seq}: "
                "an older baseline was put back"
            )
            raise SignatureError(msg)
        return info

    def check_writer(self, key: SigningKey | None, command: str) -> None:
        """Refuse to change a signed baseline without its key, or one that does not hold.

        A writer checks every directory, not only those it will read: signing again
        would otherwise vouch for an entry changed elsewhere meanwhile.
        """
        name = os.fsdecode(self.path)
        statement = seal.is_signed(self._conn)
        if statement is None:
            return
        if key is None:
            msg = (
                f"manifest {name} is signed by key {statement.key_id}: {command} needs that "
                "key's private half (--sign-key, or signing.private_key); nothing was changed"
            )
            raise SignatureError(msg)
        if key.public.id != statement.key_id:
            msg = (
                f"manifest {name} is signed by key {statement.key_id}, not by the given key "
                f"{key.public.id}; to move to a new key run 'integrityd key change'"
            )
            raise SignatureError(msg)
        seal.Checker(self._conn, key.public, name, 0).everything()

    def reseal(self, key: SigningKey | None, entry: dict[str, Any]) -> seal.Info:
        """Bring the directory digests up to date, log ``entry`` and sign (with ``key``).

        Part of the writer's transaction: the new baseline, its log entry and its
        signature are committed together or not at all.
        """
        c = self._conn
        digest = None if key is None else self._update_dirs()
        self._touched.clear()
        self._cleared.clear()
        seq, prev = seal.log_head(c)
        at = seal.now_iso()
        fields = {
            **entry,
            "seq": seq + 1,
            "prev": prev.hex(),
            "time": at,
            "baseline_sha256": digest,
            "key_id": key.public.id if key is not None else None,
        }
        text = json.dumps(fields, sort_keys=True)
        head = seal.chain(prev, text)
        c.execute("INSERT INTO log VALUES (?, ?, ?)", (seq + 1, text, head))
        if key is None or digest is None:
            # Unsigned: nobody would check the directory digests, so none are kept (they
            # cost a sixth of an init); the next signing computes them all.
            stale = (seal.STATEMENT, seal.SIGNATURE, seal.DIRS_KEPT)
            c.execute("DELETE FROM meta WHERE key IN (?, ?, ?)", stale)
            return seal.Info("unsigned", None, seq + 1, None)
        statement = seal.Statement(
            key_id=key.public.id,
            seq=seq + 1,
            log_head=head.hex(),
            baseline_sha256=digest,
            entries=int(c.execute("SELECT coalesce(sum(count), 0) FROM dirs").fetchone()[0]),
            signed_at=at,
        )
        text = statement.text()
        signature = base64.b64encode(key.sign(text.encode())).decode()
        c.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [(seal.STATEMENT, text), (seal.SIGNATURE, signature)],
        )
        return seal.Info("valid", key.public.id, seq + 1, digest, at)

    def trusted(self, with_dirs: bool = True) -> seal.Trusted | None:
        """What ``signature`` checked with a key, for the workers (None: no key)."""
        if self._checker is None:
            return None
        handed = self._checker.handover()
        return handed if with_dirs else seal.Trusted(handed.statement)

    def _update_dirs(self) -> str:
        """Bring the directory digests up to date; return the baseline digest (hex)."""
        c = self._conn
        kept = c.execute("SELECT 1 FROM meta WHERE key = ?", (seal.DIRS_KEPT,)).fetchone()
        if kept is None or seal.is_signed(c) is None:
            # Not kept (unsigned until now, or an older schema): from every row.
            c.execute("DELETE FROM dirs")
            c.executemany("INSERT INTO dirs VALUES (?, ?, ?)", list(seal.computed_dirs(c)))
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, '1')", (seal.DIRS_KEPT,))
        else:
            for path in self._cleared:
                c.execute(f"DELETE FROM dirs WHERE {_BELOW}", _below(path))
            sql = f"SELECT {seal.COLUMNS} FROM files WHERE parent = ? ORDER BY name"
            for parent in sorted(self._touched):
                rows = c.execute(sql, (parent,)).fetchall()
                if rows:
                    put = (parent, seal.dir_digest(rows), len(rows))
                    c.execute("INSERT OR REPLACE INTO dirs VALUES (?, ?, ?)", put)
                else:
                    c.execute("DELETE FROM dirs WHERE parent = ?", (parent,))
        return seal.baseline_digest(seal.roots_rows(c), seal.dirs_rows(c)).hex()

    def log_entries(self) -> list[tuple[int, str, bytes]]:
        """The change log, oldest first."""
        return list(seal.log_rows(self._conn))

    def accepted(self, limit: int) -> list[tuple[bytes, str]]:
        """(path, event JSON) of the first ``limit`` findings: what this run accepted."""
        sql = "SELECT path, data FROM temp.findings ORDER BY path, rowid LIMIT ?"
        return self._conn.execute(sql, (limit,)).fetchall()

    def entries(self, start: bytes) -> Iterator[FileState]:
        """The baseline entry for ``start`` and every entry below it."""
        return _states(self._conn, _SUBTREE, _subtree(start))

    def count_below(self, directory: bytes) -> int:
        """Number of baseline entries below ``directory``."""
        sql = f"SELECT count(*) FROM files WHERE {_BELOW}"
        return int(self._conn.execute(sql, _below(directory)).fetchone()[0])

    def totals_below(self, directory: bytes) -> tuple[int, int]:
        """(entries, bytes of regular files) below ``directory``: for the progress line."""
        sql = (
            "SELECT count(*), coalesce(sum(CASE WHEN type = 'file' THEN size END), 0) "
            f"FROM files WHERE {_BELOW}"
        )
        count, size = self._conn.execute(sql, _below(directory)).fetchone()
        return int(count), int(size)

    def lookup(self, path: bytes) -> FileState | None:
        """The baseline entry for one path."""
        return BaselineReader.lookup_in(self._conn, path)

    # -- findings, kept on disk so that the report can be sorted in bounded memory --------

    def add_finding(self, path: bytes, data: str) -> None:
        """Keep one rendered finding until the report is written."""
        self._conn.execute("INSERT INTO temp.findings VALUES (?, ?)", (path, data))

    def findings(self) -> Iterator[str]:
        """The kept findings, ordered by path."""
        for (data,) in self._conn.execute("SELECT data FROM temp.findings ORDER BY path, rowid"):
            yield data


_URI_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/._-")


def _percent_encoded(path: bytes) -> str:
    """``path`` for a SQLite URI, every byte but a few safe ones as %HH.

    SQLite turns each %HH back into that byte, so a name that is not UTF-8 opens the
    same file (urllib's ``quote`` takes text, and fails on such a name).
    """
    return "".join(chr(b) if b in _URI_SAFE else f"%{b:02X}" for b in path)


class BaselineReader:
    """Read-only access to the committed baseline, for the hash workers.

    With a public ``key``, every entry handed out is first checked against the seal
    (seal.py): a directory's rows against its digest, once per snapshot, and the
    snapshot's statement and baseline digest once. Without a snapshot (the daemon),
    each checked read is a short transaction of its own, so that the check and the
    read see the same commit.
    """

    def __init__(
        self,
        path: bytes,
        snapshot: bool = True,
        key: PublicKey | None = None,
        min_seq: int = 0,
        trusted: seal.Trusted | None = None,
    ) -> None:
        self._conn = connect_read(path)
        self._snapshot = snapshot
        self._check = (
            None
            if key is None
            else seal.Checker(
                self._conn, key, os.fsdecode(path), min_seq, trusted=trusted, snapshot=snapshot
            )
        )
        if snapshot:
            with guard(path):
                self._conn.execute("BEGIN")  # one snapshot for the whole run
                if self._check is not None:
                    self._check.fresh()

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    @contextlib.contextmanager
    def _checked(self) -> Iterator[seal.Checker]:
        """The checker, within a transaction (the run's snapshot, or one of its own)."""
        assert self._check is not None
        if self._snapshot:
            yield self._check
            return
        self._conn.execute("BEGIN")
        try:
            self._conn.execute("SELECT 1 FROM meta LIMIT 1").fetchall()  # the snapshot starts
            yield self._check
        finally:
            self._conn.execute("COMMIT")

    def signature(self) -> seal.Info:
        """The signature as this reader sees it now: checked if it has a key."""
        if self._check is None:
            return seal.describe(self._conn)
        with self._checked() as check:
            return check.info()

    def children(self, directory: bytes) -> dict[bytes, tuple[Any, ...]]:
        """The recorded fields of every baseline entry directly in ``directory``, by name."""
        sql = f"SELECT name, {_STATE} FROM files WHERE parent = ?"
        # row[1:]: this query's own row, the name and then the recorded fields (a tuple,
        # as recorded() is: star-unpacking would give a list, never equal to it).
        if self._check is None:
            return {row[0]: row[1:] for row in self._conn.execute(sql, (directory,))}
        if self._snapshot:  # the hot path of a checked run: no context manager
            rows = self._conn.execute(sql + " ORDER BY name", (directory,)).fetchall()
            self._check.entries(directory, rows)
        else:
            with self._checked() as check:
                rows = self._conn.execute(sql + " ORDER BY name", (directory,)).fetchall()
                check.entries(directory, rows)
        return {row[0]: row[1:] for row in rows}

    def children_named(
        self, directory: bytes, names: Sequence[bytes]
    ) -> dict[bytes, tuple[Any, ...]]:
        """``children`` for these names only: a huge directory, a batch at a time."""
        with self._checked() if self._check else contextlib.nullcontext() as check:
            if check is not None:
                check.directory(directory)
            found: dict[bytes, tuple[Any, ...]] = {}
            for i in range(0, len(names), _IN_LIMIT):
                chunk = names[i : i + _IN_LIMIT]
                sql = (
                    f"SELECT name, {_STATE} FROM files "
                    f"WHERE parent = ? AND name IN ({', '.join('?' * len(chunk))})"
                )
                found.update(
                    (row[0], row[1:]) for row in self._conn.execute(sql, (directory, *chunk))
                )
        return found

    def count_children(self, directory: bytes) -> int:
        """How many baseline entries ``directory`` holds directly."""
        sql = "SELECT count(*) FROM files WHERE parent = ?"
        with self._checked() if self._check else contextlib.nullcontext() as check:
            if check is not None:
                check.directory(directory)
            return int(self._conn.execute(sql, (directory,)).fetchone()[0])

    def each_child(self, directory: bytes) -> Iterator[tuple[bytes, tuple[Any, ...]]]:
        """(name, recorded fields) of ``directory``'s entries, one row at a time."""
        sql = f"SELECT name, {_STATE} FROM files WHERE parent = ? ORDER BY name"
        with self._checked() if self._check else contextlib.nullcontext() as check:
            if check is not None:
                check.directory(directory)
            for row in self._conn.execute(sql, (directory,)):
                yield row[0], row[1:]

    def below(self, directory: bytes) -> Iterator[FileState]:
        """Every baseline entry below ``directory``, in path order."""
        with self._checked() if self._check else contextlib.nullcontext() as check:
            if check is not None:
                sql = f"SELECT DISTINCT parent FROM files WHERE {_BELOW}"
                parents = [bytes(p) for (p,) in self._conn.execute(sql, _below(directory))]
                check.below(directory, parents)
            yield from _states(self._conn, _BELOW, _below(directory))

    def lookup_many(self, paths: Sequence[bytes]) -> dict[bytes, FileState]:
        """The baseline entries of ``paths`` (those that have one), by path.

        One query per directory instead of one per path: verify's batches come sorted by
        directory, and a lookup costs about as much as hashing a small file.
        """
        by_parent: dict[bytes, list[bytes]] = {}
        for path in paths:
            parent, name = split(path)
            by_parent.setdefault(parent, []).append(name)
        found: dict[bytes, FileState] = {}
        with self._checked() if self._check else contextlib.nullcontext() as check:
            for parent, names in by_parent.items():
                if check is not None:
                    check.directory(parent)
                for i in range(0, len(names), _IN_LIMIT):
                    chunk = names[i : i + _IN_LIMIT]
                    sql = (
                        f"SELECT name, {_STATE} FROM files "
                        f"WHERE parent = ? AND name IN ({', '.join('?' * len(chunk))})"
                    )
                    for name, *recorded in self._conn.execute(sql, (parent, *chunk)):
                        path = join(parent, name)
                        found[path] = FileState.from_recorded(path, recorded)
        return found

    def lookup(self, path: bytes) -> FileState | None:
        """The baseline entry for one path."""
        if self._check is None:
            return self.lookup_in(self._conn, path)
        with self._checked() as check:
            check.directory(split(path)[0])
            return self.lookup_in(self._conn, path)

    @staticmethod
    def lookup_in(conn: sqlite3.Connection, path: bytes) -> FileState | None:
        """The baseline entry for ``path`` through ``conn``."""
        sql = f"SELECT {_STATE} FROM files WHERE parent = ? AND name = ?"
        row = conn.execute(sql, split(path)).fetchone()
        return FileState.from_recorded(path, row) if row else None


def connect_read(path: bytes) -> sqlite3.Connection:
    """A read-only connection, also where this user or the filesystem may not write.

    A reader of a WAL database needs its ``-shm`` file, and creates it if it is missing:
    in a directory it may not write, or on read-only media (AIDE's advice for a
    baseline), that fails. There SQLite can still read the file as ``immutable``, which
    creates nothing and takes no lock, and which is safe only while no ``-wal`` file
    holds commits not yet merged into the manifest: integrityd merges them when its last
    connection closes, so after a clean run there is none.
    """
    name = os.fsdecode(path)
    uri = "file:" + _percent_encoded(path) + "?mode=ro"
    conn = None
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=LOCK_TIMEOUT_S, isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        refuse_foreign_schema(conn, path)
        _compat_view(conn)
        return conn
    except sqlite3.Error as e:
        if conn is not None:
            conn.close()
        if not _cannot_write(e):
            raise sqlite_error(path, e) from e
    try:
        pending = os.stat(path + b"-wal").st_size > 0
    except FileNotFoundError:
        pending = False
    except OSError as e:
        raise ManifestError(f"cannot read {name}-wal: {e.strerror}") from e
    if pending:
        msg = (
            f"manifest {name} has changes in {name}-wal that this user may not merge into "
            "it (SQLite needs to write beside it to read them); run any integrityd command "
            "on it once as a user who may write there"
        )
        raise ManifestError(msg)
    try:
        conn = sqlite3.connect(
            uri + "&immutable=1", uri=True, timeout=LOCK_TIMEOUT_S, isolation_level=None
        )
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        refuse_foreign_schema(conn, path)
        _compat_view(conn)
    except sqlite3.Error as e:
        raise sqlite_error(path, e) from e
    return conn


_OURS = frozenset(
    {("table", t) for t in ("meta", "roots", "files", "dirs", "log")} | {("index", "unrecorded")}
)


def refuse_foreign_schema(conn: sqlite3.Connection, path: bytes) -> None:
    """Refuse a manifest holding a trigger, a view or a table integrityd never creates.

    A trigger would rewrite what a writer inserts (and a signing writer would then sign
    it), a view named ``files`` over a renamed table could answer one query one way and
    the next another: both let whoever may write the file change what integrityd reads
    without changing a row it checks. SQLite's own objects (``sqlite_autoindex_*``,
    ``sqlite_stat1``) are fine: nobody else may create names beginning with ``sqlite_``.
    """
    rows = conn.execute("SELECT type, name FROM main.sqlite_master").fetchall()
    foreign = [(t, n) for t, n in rows if (t, n) not in _OURS and not n.startswith("sqlite_")]
    if not foreign:
        return
    kind, name = foreign[0]
    msg = (
        f"manifest {os.fsdecode(path)} holds a {kind} named {name!r} that integrityd never "
        "creates: its schema was changed outside integrityd, and what it reads or writes "
        "could be rewritten; it was left untouched"
    )
    if seal.has_table(conn, "meta") and seal.statement_text(conn) is not None:
        raise SignatureError(msg)  # signed: tampering with the seal's contents
    raise ManifestCorrupt(msg)


def _compat_view(conn: sqlite3.Connection) -> None:
    """Let a reader that may not upgrade an old manifest read it with today's queries.

    A temporary view named ``files`` (temp objects come first in SQLite's name look-up)
    adds the columns of later schemas as NULL: not recorded. Created in the connection's
    own temporary schema, it writes nothing to the manifest.
    """
    have = {r[1] for r in conn.execute("PRAGMA main.table_info(files)")}
    absent = [c for c, _ in _ADDED_IN_3 if c not in have]
    if have and absent:  # no files table at all: not a manifest, which the caller says
        nulls = ", ".join(f"NULL AS {c}" for c in absent)
        conn.execute(f"CREATE TEMP VIEW IF NOT EXISTS files AS SELECT *, {nulls} FROM main.files")


def _cannot_write(e: sqlite3.Error) -> bool:
    """True for SQLite's 'read-only' and 'cannot open' errors: no permission to write."""
    code = getattr(e, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN)


def guard(path: bytes) -> _Guard:
    """Context that turns SQLite errors on ``path`` into ManifestError subclasses."""
    return _Guard(path)


class _Guard:
    def __init__(self, path: bytes) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if isinstance(exc, sqlite3.Error):
            raise sqlite_error(self.path, exc) from exc


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT first and let another writer in; run statement by statement.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


SIDE_FILES = (b"-wal", b"-shm", b"-journal")


def refuse_unsafe(path: bytes) -> None:
    """Refuse a manifest that someone besides its owner could replace or rewrite.

    integrityd runs as root: a symlink planted at the manifest's path, or at its -wal or
    -shm, would have SQLite create or overwrite whatever it points to. And a baseline
    that others may write, or that lies in a directory others may write, is one an
    intruder can swap for a baseline of his own. The sticky bit (/tmp) is no help: it
    keeps others from renaming the manifest, not from making its name first (root's
    init then wrote the baseline into a file its maker owns and may edit at will), nor
    from planting a -wal or -journal, which SQLite applies to the database when it next
    opens it: any page of the baseline, chosen by whoever wrote that file.
    """
    for p in (path, *(path + s for s in SIDE_FILES)):
        try:
            st = os.lstat(p)
        except OSError:
            continue  # absent (or unreadable: opening it says why)
        if stat.S_ISLNK(st.st_mode):
            msg = (
                f"{os.fsdecode(p)} is a symlink; integrityd does not follow one at the "
                "manifest's path: give the path of the manifest itself"
            )
            raise ManifestError(msg)
    harm = (
        "they could replace the baseline, or plant its journal (-wal, -journal) for "
        "SQLite to apply to it (keep the manifest in a directory of its own, not /tmp)"
    )
    refuse_if_changeable(path, "manifest", harm, ManifestError)


def _create_private(path: bytes) -> None:
    """Create an empty manifest that only its owner may read (0600).

    SQLite gives its side files the same mode. O_EXCL and O_NOFOLLOW: nothing planted
    there meanwhile is opened.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        os.close(os.open(path, flags, 0o600))
    except FileExistsError:
        refuse_unsafe(path)  # made meanwhile: a symlink is refused, a file is opened


def _check_header(path: bytes, mode: Mode) -> bool:
    """Reject files that are not SQLite before SQLite touches them; True if new or empty."""
    name = os.fsdecode(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        if mode != "create":
            msg = f"manifest {name} does not exist; create it with 'integrityd init'"
            raise ManifestError(msg) from None
        return True
    except IsADirectoryError:
        raise ManifestError(f"manifest {name} is a directory") from None
    except OSError as e:
        raise ManifestError(f"cannot read manifest {name}: {e.strerror}") from e
    if not head:
        if mode != "create":
            raise ManifestError(f"manifest {name} is empty; create it with 'integrityd init'")
        return True
    if head != _SQLITE_MAGIC:
        msg = f"{name} is not an integrityd manifest (not an SQLite file); it was left untouched"
        raise ManifestCorrupt(msg)
    return False
