"""One record layout: FileState's recorded fields, the manifest's columns, and upgrades."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from integrityd.manifest import SCHEMA_VERSION, BaselineReader, ManifestStore, row
from integrityd.messages import RECORDED, FileState

from .conftest import findings, has_commit, integrityd, integrityd_of

SCHEMA_1_RELEASE = "974e3f2"
"""The last commit that wrote schema 1 manifests (before a root of / moved: schema 2)."""


def test_the_manifest_s_columns_are_the_recorded_fields(tmp_path: Path) -> None:
    """The files table holds parent, name, then exactly RECORDED, then verified_ns."""
    path = os.fsencode(tmp_path / "m.db")
    ManifestStore.open(path, "create").close()
    with sqlite3.connect(tmp_path / "m.db") as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(files)")]
    conn.close()
    assert columns == ["parent", "name", *RECORDED, "verified_ns"]
    assert FileState._fields[1 : 1 + len(RECORDED)] == RECORDED


def test_a_state_written_reads_back_field_for_field(tmp_path: Path) -> None:
    """Every recorded field, each with a value of its own, survives the manifest."""
    path = os.fsencode(tmp_path / "m.db")
    state = FileState(b"/r/f", "file", 11, 22, 33, 44, 0o4755, 55, 66, b"\x01" * 32, b"/t")
    with ManifestStore.open(path, "create") as store:
        store.write([row(bytearray(b"/r"), b"f", state)])
        store.commit()
    reader = BaselineReader(path)
    try:
        back = reader.lookup(b"/r/f")
        children = reader.children(b"/r")
    finally:
        reader.close()
    assert back == state
    assert back is not None and back.recorded() == state.recorded()
    assert children == {b"f": state.recorded()}


@pytest.mark.skipif(not has_commit(SCHEMA_1_RELEASE), reason="needs the git history (a full clone)")
def test_a_manifest_the_previous_release_wrote_is_upgraded(tmp_path: Path) -> None:
    """The release before schema 2 baselines a tree; this one checks it, upgrading in place."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    manifest = tmp_path / "m.db"
    r = integrityd_of(SCHEMA_1_RELEASE, tmp_path, "init", "-m", manifest, tree)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(manifest) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
    conn.close()

    (tree / "a.txt").write_text("changed")
    r = integrityd("check", "--json", "-m", manifest)
    assert (r.returncode, findings(r)) == (4, [("modified", f"{tree}/a.txt")]), r.stderr
    with sqlite3.connect(manifest) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()
