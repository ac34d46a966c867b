"""A manifest the checker may not write: AIDE's advice is to keep the baseline on read-only media.

``check`` and ``export`` read it as they would any other; ``verify`` verifies and reports
but records no progress, and says so in one line. Both ways of being read-only are real:
a read-only bind mount in a mount namespace, and a user without write permission (root
without CAP_DAC_OVERRIDE, on files whose mode has no write bit).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from .conftest import DROP_DAC, findings, integrityd, log_lines


def _mount_namespace_works() -> bool:
    return shutil.which("unshare") is not None and (
        subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode == 0
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def baselined(tmp_path: Path) -> tuple[Path, Path]:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_bytes(b"alpha\n")
    (tree / "b.txt").write_bytes(b"beta\n")
    manifest = tmp_path / "state" / "m.db"
    r = integrityd("init", "-m", manifest, tree)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["m.db"]  # no -wal left
    (tree / "a.txt").write_bytes(b"changed\n")
    return tree, manifest


def check_export_verify(tree: Path, manifest: Path, prefix: tuple[str, ...]) -> None:
    before = digest(manifest)
    r = integrityd("check", "--json", "-m", manifest, prefix=prefix)
    assert (r.returncode, findings(r)) == (4, [("modified", f"{tree}/a.txt")]), r.stderr
    r = integrityd("export", "-m", manifest, "--format", "sha256sum", prefix=prefix)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 2
    r = integrityd("verify", "--json", "-m", manifest, prefix=prefix)
    assert (r.returncode, findings(r)) == (4, [("modified", f"{tree}/a.txt")]), r.stderr
    [warning] = [e for e in log_lines(r) if e["level"] == "warning"]
    assert warning["event"] == "progress_not_recorded"
    assert warning["message"].endswith("verifying without recording which files were verified")
    assert digest(manifest) == before
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["m.db"]


@pytest.mark.skipif(not _mount_namespace_works(), reason="needs a mount namespace (root)")
def test_a_manifest_on_a_read_only_bind_mount(tmp_path: Path) -> None:
    """As root, on a read-only filesystem: SQLite cannot create the -shm file beside it."""
    tree, manifest = baselined(tmp_path)
    state = str(manifest.parent)
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    prefix = ("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", state)
    check_export_verify(tree, manifest, prefix)


@pytest.mark.skipif(not DROP_DAC, reason="needs root, to drop CAP_DAC_OVERRIDE")
def test_a_manifest_this_user_may_not_write(tmp_path: Path) -> None:
    """Read permission only, on the manifest and on its directory."""
    tree, manifest = baselined(tmp_path)
    manifest.chmod(0o444)
    manifest.parent.chmod(0o555)
    try:
        check_export_verify(tree, manifest, DROP_DAC)
    finally:
        manifest.parent.chmod(0o755)


@pytest.mark.skipif(not DROP_DAC, reason="needs root, to drop CAP_DAC_OVERRIDE")
def test_changes_that_cannot_be_merged_are_not_read_around(tmp_path: Path) -> None:
    """A -wal file with commits in it that this user cannot merge: refused, not read stale."""
    tree, manifest = baselined(tmp_path)
    conn = sqlite3.connect(manifest)
    try:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("UPDATE files SET size = size + 1 WHERE name = x'622e747874'")  # b.txt
        conn.commit()
        copy = tmp_path / "copy"
        copy.mkdir()
        shutil.copy(manifest, copy / "m.db")
        shutil.copy(f"{manifest}-wal", copy / "m.db-wal")
    finally:
        conn.close()
    assert (copy / "m.db-wal").stat().st_size > 0
    copy.chmod(0o555)
    try:
        r = integrityd("check", "-m", copy / "m.db", tree, prefix=DROP_DAC)
    finally:
        copy.chmod(0o755)
    assert r.returncode == 18, r.stdout
    [line] = log_lines(r)
    assert line["message"] == (
        f"manifest {copy}/m.db has changes in {copy}/m.db-wal that this user may not merge "
        "into it (SQLite needs to write beside it to read them); run any integrityd command "
        "on it once as a user who may write there"
    )
    assert sorted(os.listdir(copy)) == ["m.db", "m.db-wal"]
