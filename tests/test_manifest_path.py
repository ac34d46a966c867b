"""The manifest's own path: never followed through a symlink, and private to its owner."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import AS_SERVICE, SERVICE_UID, Watcher, integrityd


def test_a_symlink_at_the_manifest_s_path_is_refused(tree: Path, tmp_path: Path) -> None:
    """A symlink to a victim given as -m: every command exits 18, the victim untouched."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    link = tmp_path / "m.db"
    link.symlink_to(victim)
    for command in ("init", "check", "accept --all", "verify"):
        r = integrityd(*command.split(), "-m", link, *([tree] if command == "init" else []))
        assert r.returncode == 18, (command, r.stderr)
        assert f"{link} is a symlink" in r.stderr
    assert victim.read_bytes() == b"precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.db", "tree", "victim"]


def test_a_symlink_planted_as_a_side_file_is_refused(tree: Path, tmp_path: Path) -> None:
    """SQLite would create or truncate whatever m.db-wal or m.db-shm points to."""
    manifest = tmp_path / "m.db"
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    for side in ("-wal", "-shm"):
        planted = tmp_path / f"m.db{side}"
        if planted.exists():
            planted.unlink()
        planted.symlink_to(victim)
        r = integrityd("check", "-m", manifest)
        assert r.returncode == 18, r.stderr
        assert f"{planted} is a symlink" in r.stderr
        planted.unlink()
    assert victim.read_bytes() == b"precious\n"


def test_a_new_manifest_and_its_directory_are_private(tree: Path, tmp_path: Path) -> None:
    """It lists every file of the host: 0600, in a directory integrityd made 0700."""
    manifest = tmp_path / "state" / "deeper" / "m.db"
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
    assert stat.S_IMODE(manifest.parent.stat().st_mode) == 0o700
    for side in manifest.parent.iterdir():  # whatever SQLite left beside it: the same
        assert stat.S_IMODE(side.stat().st_mode) == 0o600, side


def test_the_daemon_s_lock_file_is_private_and_never_followed(
    tree: Path, tmp_path: Path, watcher: Callable[..., Watcher]
) -> None:
    """The lock file is 0600; a symlink planted in its place is refused (exit 20)."""
    manifest = tmp_path / "m.db"
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    w = watcher("-m", manifest)
    w.ready()
    lock = tmp_path / "m.db-watch.lock"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert w.stop() == 0
    lock.unlink()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    lock.symlink_to(victim)
    w = watcher("-m", manifest)
    assert w.proc.wait(30) == 20
    assert victim.read_bytes() == b"precious\n"
    assert os.path.islink(lock)


SHARED_GID = 65534  # nogroup: no one's own group


def test_a_manifest_others_may_write_is_refused(tree: Path, tmp_path: Path) -> None:
    """Group- or world-writable: anyone in that group could rewrite the baseline (exit 18).

    Except where the group is the owner's own (user-private groups, umask 002): no one
    else is in it.
    """
    manifest = tmp_path / "m.db"
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    os.chown(manifest, -1, SHARED_GID)
    for mode in (0o664, 0o646):
        manifest.chmod(mode)
        r = integrityd("check", "-m", manifest)
        assert r.returncode == 18, r.stderr
        assert f"may be written by others than its owner (mode {mode:04o})" in r.stderr
    manifest.chmod(0o644)  # readable by others is their business: it works
    assert integrityd("check", "-m", manifest).returncode == 0
    own = pwd.getpwuid(os.geteuid()).pw_gid
    if grp.getgrgid(own).gr_mem or sum(p.pw_gid == own for p in pwd.getpwall()) > 1:
        return  # this machine has no private group to show it with
    os.chown(manifest, -1, own)
    manifest.chmod(0o664)
    assert integrityd("check", "-m", manifest).returncode == 0


def test_a_manifest_in_a_directory_others_may_write_is_refused(tree: Path, tmp_path: Path) -> None:
    """Others could rename another baseline over it, or plant its journal (sticky or not)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    manifest = shared / "m.db"
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    os.chown(shared, -1, SHARED_GID)
    for mode in (0o777, 0o1777, 0o775):
        shared.chmod(mode)
        for command in (("check",), ("init", tree)):
            r = integrityd(*command, "-m", manifest)
            assert r.returncode == 18, r.stderr
            assert f"is in {shared}, which others than its owner may write" in r.stderr
    shared.chmod(0o755)
    assert integrityd("check", "-m", manifest).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="planting as another user needs root")
def test_a_manifest_planted_in_a_sticky_directory_is_not_written(
    tree: Path, tmp_path: Path
) -> None:
    """/tmp's sticky bit lets anyone make the name first: both refused, exit 18.

    Root's init wrote the baseline into the planter's file (his to edit at will); and a
    planted -wal is a journal SQLite would apply to the baseline. The file is left as
    it was, and no manifest is made.
    """
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    manifest = shared / "m.db"
    plant = [*AS_SERVICE, "touch"]  # another user; CAP_DAC_READ_SEARCH to reach tmp_path
    subprocess.run([*plant, str(manifest)], check=True)
    r = integrityd("init", "-m", manifest, tree)
    assert r.returncode == 18, r.stderr
    assert (manifest.stat().st_uid, manifest.stat().st_size) == (SERVICE_UID, 0)
    manifest.unlink()
    subprocess.run([*plant, f"{manifest}-wal"], check=True)
    r = integrityd("init", "-m", manifest, tree)
    assert r.returncode == 18, r.stderr
    assert not manifest.exists()
