"""Package-aware reports: findings looked up in a dpkg database, set apart, accepted.

A database laid out as dpkg lays its own (``status``, ``info/*.md5sums``) under a
``dpkg_admindir`` in ``tmp_path``, listing files of a real tree; and the machine's real
database, read for a real package's file whose content differs under a bind mount in a
private mount namespace. Upgrades are played by writing new content and the new MD5 into
the database, as dpkg does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from integrityd.messages import FileState, Finding
from integrityd.packages import Attributor, Dpkg

from .conftest import Watcher, events, findings, in_mount_namespace, integrityd, log_lines, summary

DPKG_STATUS = Path("/var/lib/dpkg/status")


@dataclass
class Dpkgish:
    """A tree, a dpkg-like database that owns part of it, and a config naming both."""

    root: Path
    admin: Path
    config: Path

    def file(self, rel: str) -> Path:
        """The tree's file at ``rel``."""
        return self.root / rel

    def md5sums(self, package: str, rels: list[str]) -> None:
        """Write ``package``'s md5sums for ``rels`` as they are now on disk (dpkg's unpack)."""
        lines = [f"{_md5(self.file(r).read_bytes())}  {_listed(self.file(r))}\n" for r in rels]
        (self.admin / "info" / f"{package}.md5sums").write_text("".join(lines))


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _listed(path: Path) -> str:
    """A path as dpkg lists it: without the leading slash."""
    return str(path).lstrip("/")


TOOL = ["usr/bin/tool", "usr/lib/tool/helper"]
OTHER = ["usr/bin/other"]


@pytest.fixture
def db(tmp_path: Path, manifest: Path) -> Dpkgish:
    root = tmp_path / "root"
    for rel, data in {
        "usr/bin/tool": b"tool 1.0\n",
        "usr/lib/tool/helper": b"helper 1.0\n",
        "usr/bin/other": b"other 2.0\n",
        "usr/local/bin/mine": b"not a package's\n",
        "etc/tool.conf": b"setting = 1\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    admin = tmp_path / "dpkg"
    (admin / "info").mkdir(parents=True)
    conf = root / "etc/tool.conf"
    (admin / "status").write_text(
        "Package: tool\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0-1\n"
        f"Conffiles:\n {conf} {_md5(conf.read_bytes())}\nDescription: a tool\n more\n\n"
        "Package: other\nStatus: install ok installed\nArchitecture: all\nVersion: 2.0\n\n"
        "Package: gone\nStatus: purge ok not-installed\nArchitecture: all\n"
    )
    d = Dpkgish(root, admin, tmp_path / "c.yaml")
    d.md5sums("tool:amd64", TOOL)  # a Multi-Arch: same package's file is named with :arch
    d.md5sums("other", OTHER)
    d.config.write_text(
        f"manifest: {manifest}\nroots:\n  - path: {root}\npackages:\n  dpkg_admindir: {admin}\n"
    )
    assert integrityd("init", "-c", d.config).returncode == 0
    return d


def upgrade(db: Dpkgish) -> None:
    """Upgrade tool to 1.1: new content in both files, and the database says so; version 1.1-1."""
    db.file("usr/bin/tool").write_bytes(b"tool 1.1, a longer build\n")
    db.file("usr/lib/tool/helper").write_bytes(b"helper 1.1\n")
    db.md5sums("tool:amd64", TOOL)
    status = db.admin / "status"
    status.write_text(status.read_text().replace("Version: 1.0-1", "Version: 1.1-1"))


def by_path(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["file"]["path"]: e for e in found if "file" in e}


def test_a_package_upgrade_is_attributed_and_a_tampered_package_file_is_flagged(
    db: Dpkgish,
) -> None:
    upgrade(db)
    db.file("usr/bin/other").write_bytes(b"other 2.0, with a backdoor\n")  # database untouched
    db.file("etc/tool.conf").write_bytes(b"setting = 2\n")  # an admin's edit of a conffile
    db.file("usr/local/bin/mine").write_bytes(b"mine, edited\n")
    r = integrityd("check", "--json", "-c", db.config)
    assert r.returncode == 4, r.stderr
    got = by_path(events(r))
    tool = {"name": "tool", "version": "1.1-1", "architecture": "amd64", "manager": "dpkg"}
    assert got[str(db.file("usr/bin/tool"))]["package"] == {
        **tool, "digest_algorithm": "md5", "matches": True,
    }  # fmt: skip
    assert got[str(db.file("usr/lib/tool/helper"))]["package"]["matches"] is True
    other = got[str(db.file("usr/bin/other"))]
    assert other["package"] == {
        "name": "other", "version": "2.0", "architecture": "all", "manager": "dpkg",
        "digest_algorithm": "md5", "matches": False,
    }  # fmt: skip
    assert other["integrityd"]["risk"] == ["package_mismatch"]
    conf = got[str(db.file("etc/tool.conf"))]
    assert conf["package"]["conffile"] is True
    assert conf["package"]["matches"] is False
    assert "integrityd" not in conf  # edited here, as conffiles are: not flagged
    mine = got[str(db.file("usr/local/bin/mine"))]
    assert "package" not in mine
    assert "integrityd" not in mine
    assert "package" not in got[str(db.file("usr/bin/tool"))].get("baseline", {})


def test_the_text_report_sets_the_upgrade_apart_and_shouts_at_the_mismatch(db: Dpkgish) -> None:
    upgrade(db)
    db.file("usr/bin/other").write_bytes(b"other 2.0, with a backdoor\n")
    db.file("usr/local/bin/mine").write_bytes(b"mine, edited\n")
    r = integrityd("check", "-c", db.config)
    assert r.returncode == 4, r.stderr
    lines = r.stdout.splitlines()
    head = lines.index(
        "changed by package tool 1.1-1 (dpkg), matching the package database: 2 files"
    )
    before, grouped = lines[:head], lines[head + 1 :]
    assert f"modified   {db.file('usr/bin/other')}" in before
    assert f"{'':13}! PACKAGE MISMATCH: owned by other 2.0 (dpkg), but not its content" in before
    assert f"modified   {db.file('usr/local/bin/mine')}" in before
    assert f"  modified   {db.file('usr/bin/tool')}" in grouped
    assert f"  modified   {db.file('usr/lib/tool/helper')}" in grouped
    assert not any("tool 1.1-1" in line for line in before)
    assert not any("matches the package database" in line for line in grouped)  # the heading says


def test_a_package_version_reaches_the_text_report_escaped(db: Dpkgish) -> None:
    """The package database is root's to edit: an ESC in a version must not steer a tty."""
    upgrade(db)
    status = db.admin / "status"
    status.write_text(status.read_text().replace("Version: 1.1-1", "Version: 1.1\x1b[2K"))
    db.file("usr/bin/other").write_bytes(b"other 2.0, with a backdoor\n")
    r = integrityd("check", "-c", db.config)
    assert r.returncode == 4, r.stderr
    assert "\x1b" not in r.stdout
    assert (
        "changed by package tool 1.1\\x1b[2K (dpkg), matching the package database: 2 files"
        in r.stdout.splitlines()
    )


def test_accept_packages_accepts_exactly_what_the_database_vouches_for(db: Dpkgish) -> None:
    upgrade(db)
    new = db.file("usr/lib/tool/plugin")
    new.write_bytes(b"a file the upgrade added\n")
    db.md5sums("tool:amd64", [*TOOL, "usr/lib/tool/plugin"])
    db.file("usr/bin/other").write_bytes(b"other 2.0, with a backdoor\n")
    db.file("usr/bin/tool").chmod(0o4755)  # the package's content, but now setuid
    os.setxattr(db.file("usr/lib/tool/helper"), "user.planted", b"1")  # content matches
    stray = db.file("usr/lib/tool/stray")
    stray.write_bytes(b"listed by no package\n")
    db.file("usr/local/bin/mine").unlink()
    r = integrityd("accept", "--packages", "--json", "-c", db.config)
    assert r.returncode == 0, r.stderr
    assert sorted(findings(r)) == [("added", str(new))]
    assert summary(r)["added"] == 1
    [declined] = [e for e in log_lines(r) if e["event"] == "packages_declined"]
    assert declined["files"] == 4  # other, tool (setuid), helper (xattr), stray
    after = integrityd("check", "--json", "-c", db.config)
    assert after.returncode == 1 | 2 | 4, after.stderr
    assert sorted(findings(after)) == sorted([
        ("added", str(stray)),
        ("modified", str(db.file("usr/lib/tool/helper"))),
        ("modified", str(db.file("usr/bin/other"))),
        ("modified", str(db.file("usr/bin/tool"))),
        ("removed", str(db.file("usr/local/bin/mine"))),
    ])  # fmt: skip
    log = integrityd("log", "-c", db.config)
    assert log.returncode == 0, log.stderr


def test_accept_packages_without_a_database_says_so(db: Dpkgish, tmp_path: Path) -> None:
    cfg = tmp_path / "nodb.yaml"
    cfg.write_text(db.config.read_text().replace(str(db.admin), str(tmp_path / "absent")))
    r = integrityd("accept", "--packages", "-c", cfg)
    assert r.returncode == 16, r.stderr
    assert "needs a package database" in r.stderr
    assert "Traceback" not in r.stderr
    both = integrityd("accept", "--packages", "--grown", "-c", db.config)
    assert both.returncode == 16
    assert "--grown or --packages" in both.stderr


def test_a_bad_packages_section_names_file_line_and_key(db: Dpkgish, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(db.config.read_text() + "  manager: yum\n")
    r = integrityd("config", "check", cfg)
    assert r.returncode == 17
    assert f"{cfg}:6" in r.stderr
    assert "packages.manager" in r.stderr
    assert "must be auto, dpkg or none" in r.stderr


def test_manager_none_makes_no_lookups(db: Dpkgish) -> None:
    db.config.write_text(db.config.read_text() + "  manager: none\n")
    upgrade(db)
    r = integrityd("check", "--json", "-c", db.config)
    assert r.returncode == 4
    assert all("package" not in e for e in events(r))


def test_the_daemon_reads_the_database_as_dpkg_changes_it(
    db: Dpkgish, watcher: Callable[..., Watcher]
) -> None:
    w = watcher("--json", "-c", db.config)
    w.ready()
    db.file("usr/bin/other").write_bytes(b"other, replaced\n")
    other = w.wait("modified", db.file("usr/bin/other"))  # the daemon has its index now
    assert other["package"]["matches"] is False
    assert other["integrityd"]["risk"] == ["package_mismatch"]
    # A package installed since: its md5sums and status entry first, then its file (so
    # the event cannot come before the database has it, as it may under a real dpkg).
    new = db.file("usr/bin/newtool")
    content = b"newtool 0.1\n"
    (db.admin / "info" / "newtool.md5sums").write_text(f"{_md5(content)}  {_listed(new)}\n")
    with (db.admin / "status").open("a") as f:
        f.write("\nPackage: newtool\nStatus: install ok installed\nVersion: 0.1-1\n")
    new.write_bytes(content)
    added = w.wait("added", new)
    assert added["package"] == {
        "name": "newtool", "version": "0.1-1", "manager": "dpkg", "digest_algorithm": "md5",
        "matches": True,
    }  # fmt: skip
    assert "integrityd" not in added


def test_content_changed_since_the_worker_read_it_does_not_match(db: Dpkgish) -> None:
    """The worker's SHA-256 and the MD5 read here must be of one content."""
    path = db.file("usr/bin/tool")
    upgrade(db)
    st = os.lstat(path)
    read = FileState(
        bytes(path), "file", st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
        0o644, 0, 0, hashlib.sha256(b"what the worker read\n").digest(), None,
    )  # fmt: skip
    attributor = Attributor(Dpkg(str(db.admin)))
    assert attributor.package(Finding("modified", bytes(path), None, read)) == {
        "name": "tool", "version": "1.1-1", "architecture": "amd64", "manager": "dpkg",
        "digest_algorithm": "md5", "matches": False,
    }  # fmt: skip
    now = read._replace(sha256=hashlib.sha256(path.read_bytes()).digest())
    assert attributor.package(Finding("modified", bytes(path), None, now))["matches"] is True  # type: ignore[index]


# -- the machine's own database -------------------------------------------------------------

needs_dpkg = pytest.mark.skipif(not DPKG_STATUS.exists(), reason="not a dpkg system")


def _owned(rel_dir: str) -> tuple[str, Path, str]:
    """A package and one regular file it owns under ``rel_dir``, with the database's MD5."""
    for md5sums in sorted(Path("/var/lib/dpkg/info").glob("*.md5sums")):
        for line in md5sums.read_text(errors="replace").splitlines():
            digest, _, rel = line.partition("  ")
            path = Path("/") / rel
            ours = rel.startswith(rel_dir) and path.is_file() and not path.is_symlink()
            if ours and path.stat().st_size and _md5(path.read_bytes()) == digest:
                return md5sums.stem.split(":")[0], path, digest
    pytest.skip(f"no intact package file under /{rel_dir}")


@needs_dpkg
def test_the_real_database_knows_a_merged_usr_binary() -> None:
    """On merged /usr, dpkg may list bin/cat for /usr/bin/cat: both are one file."""
    cat = Path("/usr/bin/cat")
    owner = Dpkg("/var/lib/dpkg").owner(bytes(cat))
    assert owner is not None
    assert owner.name == "coreutils"
    assert owner.digest == _md5(cat.read_bytes())
    assert owner.version
    assert Dpkg("/var/lib/dpkg").owner(b"/usr/bin/no-such-program-here") is None


@needs_dpkg
@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux unshare missing")
def test_the_real_database_flags_a_replaced_package_file(tmp_path: Path, manifest: Path) -> None:
    """A package's file replaced under a bind mount (a private mount namespace): mismatch."""
    package, path, _ = _owned("usr/share/doc/")
    root = path.parent
    fake = tmp_path / "replacement"
    fake.write_bytes(path.read_bytes() + b"\nan intruder's line\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"manifest: {manifest}\nroots:\n  - path: {root}\n")

    def run(*args: object, over: bool) -> subprocess.CompletedProcess[str]:
        cli = " ".join(f"'{a}'" for a in (sys.executable, "-m", "integrityd", *args))
        mount = f"mount --bind '{fake}' '{path}' && " if over else ""
        return in_mount_namespace(mount + cli)

    assert run("init", "-c", cfg, over=False).returncode == 0
    tampered = run("check", "--json", "-c", cfg, over=True)
    assert tampered.returncode == 4, tampered.stderr
    [found] = [e for e in events(tampered) if "file" in e]
    assert found["file"]["path"] == str(path)
    assert found["package"]["name"] == package
    assert found["package"]["matches"] is False
    assert found["integrityd"]["risk"] == ["package_mismatch"]
    # Baselined with the intruder's content, checked with the package's: it matches.
    assert run("init", "-c", cfg, over=True).returncode == 0
    restored = run("check", "--json", "-c", cfg, over=False)
    assert restored.returncode == 4, restored.stderr
    [back] = [e for e in events(restored) if "file" in e]
    assert back["package"]["matches"] is True
    assert "integrityd" not in back
