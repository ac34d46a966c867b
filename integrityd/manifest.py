"""The manifest: baselines of any number of roots in one SQLite file.

Paths are stored as bytes, so non-UTF-8 names survive. Writers (init, accept) hold one
IMMEDIATE transaction for the whole run: the previous baseline stays exactly as it was
until the final commit, whatever happens before it (Ctrl-C, kill -9, a full disk), and
a second writer is turned away with ``ManifestLocked`` instead of waiting for minutes.
WAL mode lets ``check`` read while a writer works. Comparison happens in batches inside
SQLite: only rows that differ from the baseline come back to Python.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Literal, Self

from integrityd.config import RootConfig
from integrityd.errors import ManifestCorrupt, ManifestError, ManifestLocked
from integrityd.events import FileState

APPLICATION_ID = int.from_bytes(b"ITGD", "big")
SCHEMA_VERSION = 1
LOCK_TIMEOUT_S = 3.0
_SQLITE_MAGIC = b"SQLite format 3\x00"
_COLUMNS = "path, type, size, mtime_ns, ctime_ns, inode, mode, uid, gid, sha256, target"
_DIFFERS = " OR ".join(f"b.{c} IS NOT f.{c}" for c in _COLUMNS.split(", ")[1:])

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roots (
    path BLOB PRIMARY KEY, options TEXT NOT NULL, device INTEGER,
    created_ns INTEGER NOT NULL, updated_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY, type TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
    mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
    sha256 BLOB, target BLOB, verified_ns INTEGER NOT NULL
) WITHOUT ROWID;
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
"""

_TEMP = f"""
CREATE TEMP TABLE batch ({_COLUMNS}, error_type, error);
CREATE TEMP TABLE seen (path BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE gone (path BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE findings (path BLOB NOT NULL, data TEXT NOT NULL);
"""

Mode = Literal["read", "write", "create"]


def journal_files(path: bytes) -> frozenset[bytes]:
    """The manifest and the files SQLite keeps beside it; never reported as changes."""
    return frozenset({path} | {path + s for s in (b"-wal", b"-shm", b"-journal")})


def in_scope(start: bytes) -> tuple[str, tuple[bytes, bytes, bytes]]:
    """SQL condition (and parameters) for ``start`` and everything below it."""
    base = start.rstrip(b"/")
    # '0' sorts right after '/', so [base/, base0) is exactly the subtree.
    return "(path = ? OR (path >= ? AND path < ?))", (start, base + b"/", base + b"0")


def _sqlite_error(path: bytes, e: sqlite3.Error) -> ManifestError:
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

    @classmethod
    def open(cls, path: bytes, mode: Mode) -> Self:
        """Open (or, for ``create``, make) the manifest and, for writers, take its lock."""
        name = os.fsdecode(path)
        fresh = _check_header(path, mode)
        if mode == "create":
            parent = os.path.dirname(path)
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as e:
                msg = f"cannot create the manifest's directory {os.fsdecode(parent)}: {e.strerror}"
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
            raise _sqlite_error(path, e) from e
        except ManifestError:
            conn.close()
            raise
        return store

    def _start(self, fresh: bool, mode: Mode) -> None:
        c = self._conn
        c.execute("PRAGMA temp_store = FILE")
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
            _run_script(c, _SCHEMA)
        version = c.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            msg = f"manifest {os.fsdecode(self.path)} was written by a newer integrityd"
            raise ManifestCorrupt(f"{msg} (schema {version} > {SCHEMA_VERSION})")
        _run_script(c, _TEMP)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close, rolling back anything not committed."""
        self._conn.close()

    def commit(self) -> None:
        """Make this run's writes the new baseline, atomically."""
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e) from e

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
            out.append(
                RootConfig(
                    path=path,
                    exclude=tuple(o.get("exclude", ())),
                    check=tuple(o.get("check", RootConfig.__dataclass_fields__["check"].default)),
                    one_filesystem=bool(o.get("one_filesystem", True)),
                )
            )
        return out

    def put_root(self, root: RootConfig, device: int) -> None:
        """Record (or update) a root and the options its baseline was made with."""
        options = {k: v for k, v in asdict(root).items() if k != "path"}
        self._conn.execute(
            "INSERT INTO roots VALUES (?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
            "options = excluded.options, device = excluded.device, "
            "updated_ns = excluded.updated_ns",
            (root.path, json.dumps(options), device, self._now, self._now),
        )

    # -- comparison ----------------------------------------------------------------------

    def compare(self, states: list[FileState]) -> list[tuple[FileState, FileState | None]]:
        """Stage a batch; return (now, baseline) for each entry that is not exactly as before.

        Writers also store every verified entry as the new baseline, in the open transaction.
        """
        c = self._conn
        c.executemany(f"INSERT INTO temp.batch VALUES ({', '.join('?' * 13)})", states)
        rows = c.execute(
            f"SELECT b.*, f.{_COLUMNS.replace(', ', ', f.')} FROM temp.batch b "
            f"LEFT JOIN files f ON f.path = b.path WHERE b.type != 'missing' AND "
            f"(b.error_type IS NOT NULL OR f.path IS NULL OR {_DIFFERS})"
        ).fetchall()
        if self.writable:
            c.execute(
                f"INSERT OR REPLACE INTO files SELECT {_COLUMNS}, ? FROM temp.batch "
                "WHERE error_type IS NULL AND type != 'missing'",
                (self._now,),
            )
        c.execute(
            "INSERT OR IGNORE INTO temp.seen SELECT path FROM temp.batch WHERE type != 'missing'"
        )
        c.execute("DELETE FROM temp.batch")
        return [
            (FileState(*r[:13]), FileState(*r[13:24]) if r[13] is not None else None) for r in rows
        ]

    def unseen(self, start: bytes) -> Iterator[FileState]:
        """Baseline entries under ``start`` that this run has not seen."""
        cond, params = in_scope(start)
        yield from (
            FileState(*r)
            for r in self._conn.execute(
                f"SELECT {_COLUMNS} FROM files WHERE {cond} "
                "AND NOT EXISTS (SELECT 1 FROM temp.seen s WHERE s.path = files.path) "
                "ORDER BY path",
                params,
            )
        )

    def count(self, start: bytes) -> int:
        """Number of baseline entries under ``start``."""
        cond, params = in_scope(start)
        return int(
            self._conn.execute(f"SELECT count(*) FROM files WHERE {cond}", params).fetchone()[0]
        )

    def mark_gone(self, path: bytes) -> None:
        """Drop an entry from the baseline once ``drop_gone`` runs (safe while iterating)."""
        self._conn.execute("INSERT OR IGNORE INTO temp.gone VALUES (?)", (path,))

    def drop_gone(self) -> None:
        """Delete the entries marked gone, in the open transaction."""
        self._conn.execute("DELETE FROM files WHERE path IN (SELECT path FROM temp.gone)")
        self._conn.execute("DELETE FROM temp.gone")

    def lookup(self, path: bytes) -> FileState | None:
        """The baseline entry for one path."""
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM files WHERE path = ?", (path,)).fetchone()
        return FileState(*row) if row else None

    # -- findings, kept on disk so that the report can be sorted in bounded memory --------

    def add_finding(self, path: bytes, data: str) -> None:
        """Keep one rendered finding until the report is written."""
        self._conn.execute("INSERT INTO temp.findings VALUES (?, ?)", (path, data))

    def findings(self) -> Iterator[str]:
        """The kept findings, ordered by path."""
        for (data,) in self._conn.execute("SELECT data FROM temp.findings ORDER BY path, rowid"):
            yield data


class _Guard:
    def __init__(self, path: bytes) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if isinstance(exc, sqlite3.Error):
            raise _sqlite_error(self.path, exc) from exc


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT first and let another writer in; run statement by statement.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


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
