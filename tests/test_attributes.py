"""What an intruder changes besides content: capabilities, ACLs, xattrs, labels, flags, links.

Each change is made for real on a real file (as root; written with ``os.setxattr`` and
the ``FS_IOC_SETFLAGS`` ioctl, so no tool has to be installed) and must be reported by
a default ``check`` with old → new. Only what the filesystem under the test's temporary
directory cannot do is skipped, with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from integrityd.attributes import acl_text, caps_text, flag_names, xattr_value

from .conftest import (
    AS_SERVICE,
    SERVICE_UID,
    Watcher,
    events,
    findings,
    has_commit,
    integrityd,
    integrityd_of,
    log_lines,
)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="capabilities, trusted.* and chattr need root")

CAP_SETUID = 7
CAP_NET_RAW = 13
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
IMMUTABLE = 0x10
UNDEFINED_ID = 0xFFFFFFFF
SCHEMA_2_RELEASE = "bd1c827"
"""The last commit that wrote schema 2 manifests (before the attributes: schema 3)."""


def caps_v2(*bits: int, effective: bool = True) -> bytes:
    """A ``security.capability`` value as setcap writes it (VFS_CAP_REVISION_2)."""
    permitted = sum(1 << b for b in bits)
    magic = 0x02000000 | (1 if effective else 0)
    return struct.pack("<IIIII", magic, permitted & 0xFFFFFFFF, 0, permitted >> 32, 0)


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A ``system.posix_acl_*`` value from (tag, permissions, id) entries in kernel order."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def set_flags(path: Path, add: int = 0, remove: int = 0) -> None:
    """chattr: change a file's or directory's inode flags."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        now = struct.unpack("<i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 4))[0]
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<i", (now | add) & ~remove))
    finally:
        os.close(fd)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """A small tree; whatever a test made immutable is made mutable again afterwards."""
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "app").write_bytes(b"#!/bin/sh\nexit 0\n")
    (root / "app").chmod(0o755)
    (root / "secret").write_bytes(b"password\n")
    (root / "secret").chmod(0o644)
    (root / "sub" / "data").write_bytes(b"data\n")
    yield root
    for p in (root / "app", root / "secret", root / "sub"):
        if p.exists() and not p.is_symlink():
            with contextlib.suppress(OSError):
                set_flags(p, remove=IMMUTABLE)


def checked(tree: Path, manifest: Path, change: Callable[[], None]) -> tuple[int, list[Any]]:
    """Baseline ``tree``, make the change, check: (exit code, the finding events)."""
    r = integrityd("init", "-m", manifest, tree)
    assert r.returncode == 0, r.stderr
    change()
    r = integrityd("check", "--json", "-m", manifest)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, [e for e in events(r) if "file" in e]


def only(found: list[Any], path: Path) -> dict[str, Any]:
    """The one finding, which must be a metadata change of ``path``."""
    assert [(e["event"]["action"], e["file"]["path"]) for e in found] == [("metadata", str(path))]
    return dict(found[0])


def setxattr_or_skip(
    path: Path, name: str, value: bytes, what: str, follow_symlinks: bool = True
) -> None:
    """os.setxattr, or skip the test where the filesystem cannot hold ``what``."""
    try:
        os.setxattr(path, name, value, follow_symlinks=follow_symlinks)
    except OSError as e:
        skip_unless_supported(e, what)


def skip_unless_supported(e: OSError, what: str) -> None:
    if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOTTY, errno.EPERM):
        pytest.skip(f"the filesystem under {os.path.dirname(e.filename or '/')} has no {what}")
    raise e


@needs_root
def test_a_capability_set_on_a_binary_is_reported_with_a_risk(tree: Path, manifest: Path) -> None:
    """The capability setcap cap_setuid=ep gives: no byte changed, yet a root shell."""
    app = tree / "app"
    code, found = checked(
        tree, manifest, lambda: os.setxattr(app, "security.capability", caps_v2(CAP_SETUID))
    )
    e = only(found, app)
    assert code == 4
    assert e["changes"] == ["capabilities"]
    assert e["file"]["capabilities"] == "cap_setuid=ep"
    assert "capabilities" not in e["baseline"]
    assert e["integrityd"] == {"risk": ["capabilities"]}
    r = integrityd("check", "-m", manifest)
    assert "capabilities (none) → cap_setuid=ep" in r.stdout
    assert "! capabilities" in r.stdout


def test_a_user_xattr_is_reported(tree: Path, manifest: Path) -> None:
    """What setfattr -n user.x -v 1 does: the event carries every xattr by name."""
    secret = tree / "secret"
    try:
        os.setxattr(secret, "user.probe", b"x")
        os.removexattr(secret, "user.probe")
    except OSError as error:
        skip_unless_supported(error, "user xattrs")
    code, found = checked(tree, manifest, lambda: os.setxattr(secret, "user.x", b"1"))
    e = only(found, secret)
    assert (code, e["changes"]) == (4, ["xattrs"])
    assert e["file"]["xattrs"] == {"user.x": '"1"'}
    assert "xattrs" not in e["baseline"]
    assert "integrityd" not in e


def test_an_acl_entry_is_reported_in_getfacl_form(tree: Path, manifest: Path) -> None:
    """What setfacl -m u:nobody:r does to a secret: the mode stays 0644, the ACL does not."""
    secret = tree / "secret"
    value = acl((0x01, 6, UNDEFINED_ID), (0x02, 4, 65534), (0x04, 4, UNDEFINED_ID),
                (0x10, 4, UNDEFINED_ID), (0x20, 4, UNDEFINED_ID))  # fmt: skip
    code, found = checked(
        tree,
        manifest,
        lambda: setxattr_or_skip(secret, "system.posix_acl_access", value, "POSIX ACLs"),
    )
    e = only(found, secret)
    assert (code, e["changes"]) == (4, ["acl"])
    assert e["file"]["acl"] == "u::rw-,u:65534:r--,g::r--,m::r--,o::r--"
    assert e["file"]["mode"] == e["baseline"]["mode"] == "0644"


@needs_root
def test_the_immutable_flag_is_reported(tree: Path, manifest: Path) -> None:
    """The immutable flag (chattr +i) on a file and a directory pins them against fixes."""

    def change() -> None:
        try:
            set_flags(tree / "secret", add=IMMUTABLE)
            set_flags(tree / "sub", add=IMMUTABLE)
        except OSError as e:
            skip_unless_supported(e, "inode flags")

    code, found = checked(tree, manifest, change)
    assert code == 4
    assert [(e["event"]["action"], e["file"]["path"], e["changes"]) for e in found] == [
        ("metadata", str(tree / "secret"), ["attributes"]),
        ("metadata", str(tree / "sub"), ["attributes"]),
    ]
    for e in found:
        assert e["file"]["attributes"] == ["immutable"]
        assert e["baseline"]["attributes"] == []
    r = integrityd("check", "-m", manifest)
    assert "attributes (none) → immutable" in r.stdout


def test_a_new_hard_link_is_reported(tree: Path, manifest: Path, tmp_path: Path) -> None:
    """A second name outside the tree keeps a copy of a file the tree may later drop."""
    secret = tree / "secret"
    code, found = checked(tree, manifest, lambda: os.link(secret, tmp_path / "kept"))
    e = only(found, secret)
    assert (code, e["changes"]) == (4, ["nlink"])
    assert (e["baseline"]["nlink"], e["file"]["nlink"]) == (1, 2)


def test_a_directory_s_link_count_is_not_a_change(tree: Path, manifest: Path) -> None:
    """A directory's nlink counts its subdirectories: the new one is reported, nothing else."""
    code, found = checked(tree, manifest, (tree / "sub" / "new").mkdir)
    assert (code, [(e["event"]["action"], e["file"]["path"]) for e in found]) == (
        1,
        [("added", str(tree / "sub" / "new"))],
    )


@pytest.mark.parametrize(
    ("mode", "risk"), [(0o4755, ["setuid"]), (0o2755, ["setgid"]), (0o757, ["world_writable"])]
)
def test_a_dangerous_mode_is_marked_as_a_risk(
    tree: Path, manifest: Path, mode: int, risk: list[str]
) -> None:
    """A file that became setuid, setgid or world-writable is marked in both outputs."""
    app = tree / "app"
    code, found = checked(tree, manifest, lambda: app.chmod(mode))
    e = only(found, app)
    assert (code, e["changes"], e["file"]["mode"]) == (4, ["mode"], f"{mode:04o}")
    assert e["integrityd"] == {"risk": risk}
    r = integrityd("check", "-m", manifest)
    assert f"! {risk[0].replace('_', ' ')}" in r.stdout


def test_a_new_setuid_file_is_marked(tree: Path, manifest: Path) -> None:
    """An added file is flagged for what it has, not only for what it gained."""

    def change() -> None:
        (tree / "sub" / "sh").write_bytes(b"x")
        (tree / "sub" / "sh").chmod(0o4755)

    code, found = checked(tree, manifest, change)
    assert code == 1
    assert [(e["event"]["action"], e.get("integrityd")) for e in found] == [
        ("added", {"risk": ["setuid"]})
    ]


@needs_root
def test_a_device_node_re_created_with_other_numbers_is_reported(
    tree: Path, manifest: Path
) -> None:
    """/dev/null (1:3) swapped for /dev/mem (1:1) under the same name, owner and mode."""
    node = tree / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(node, 0o666)

    def change() -> None:
        node.unlink()
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 1))
        os.chmod(node, 0o666)

    code, found = checked(tree, manifest, change)
    e = only(found, node)
    assert (code, e["changes"]) == (4, ["rdev"])
    assert (e["baseline"]["rdev"], e["file"]["rdev"]) == ("1:3", "1:1")


@needs_root
def test_a_symlink_s_own_xattr_is_read_without_following_it(tree: Path, manifest: Path) -> None:
    """trusted.* on a symlink: read from the link itself, never from what it points to."""
    link = tree / "link"
    link.symlink_to(tree / "secret")
    code, found = checked(
        tree,
        manifest,
        lambda: setxattr_or_skip(
            link, "trusted.mark", b"\x00\x01", "trusted xattrs on symlinks", False
        ),
    )
    e = only(found, link)
    assert (code, e["changes"]) == (4, ["xattrs"])
    assert e["file"]["xattrs"] == {"trusted.mark": "0sAAE="}
    assert os.listxattr(tree / "secret") == []  # the target was never touched


def service_manifest(tmp_path: Path) -> Path:
    """A manifest path in a directory the unprivileged service user may write."""
    home = tmp_path / "service"
    home.mkdir()
    os.chown(home, SERVICE_UID, SERVICE_UID)
    return home / "m.db"


def hand_over(manifest: Path) -> None:
    """Give the manifest root made (and its journal files) to the service user."""
    for p in manifest.parent.iterdir():
        os.chown(p, SERVICE_UID, SERVICE_UID)


@needs_root
def test_trusted_xattrs_root_recorded_are_not_reported_by_the_unprivileged_service(
    tree: Path, tmp_path: Path
) -> None:
    """The kernel hides trusted.* from the service user: hidden is not removed.

    A baseline made with sudo holds trusted.* names that the daemon and the verify timer
    (user integrityd, CAP_DAC_READ_SEARCH only) are never shown: each such file read as
    "xattrs trusted.x → (none)", every run. Now they are not compared there, with one
    warning per run; root still compares them.
    """
    manifest = service_manifest(tmp_path)
    secret = tree / "secret"
    setxattr_or_skip(secret, "trusted.x", b"1", "trusted xattrs")
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    hand_over(manifest)
    r = integrityd("check", "--json", "-m", manifest, prefix=AS_SERVICE)
    assert (r.returncode, findings(r)) == (0, []), r.stdout + r.stderr
    warned = [e for e in log_lines(r) if e["event"] == "trusted_xattrs_not_compared"]
    assert [e["entries"] for e in warned] == [1]
    # What the service does see is still compared, the hidden names shown as recorded.
    secret.chmod(0o600)
    r = integrityd("check", "--json", "-m", manifest, prefix=AS_SERVICE)
    e = only([e for e in events(r) if "file" in e], secret)
    assert (r.returncode, e["changes"]) == (4, ["mode"])
    secret.chmod(0o644)
    # Root sees them, and a changed value is a change.
    os.setxattr(secret, "trusted.x", b"2")
    r = integrityd("check", "--json", "-m", manifest)
    e = only([e for e in events(r) if "file" in e], secret)
    assert (r.returncode, e["changes"]) == (4, ["xattrs"])
    assert (e["baseline"]["xattrs"], e["file"]["xattrs"]) == (
        {"trusted.x": '"1"'},
        {"trusted.x": '"2"'},
    )
    assert "trusted_xattrs_not_compared" not in r.stderr


@needs_root
def test_an_unprivileged_accept_keeps_the_trusted_xattrs_root_recorded(
    tree: Path, tmp_path: Path
) -> None:
    """An accept by the service user (accept --grown on a timer) must not drop them.

    Dropped, root's next check would report every such file "trusted.x added".
    """
    manifest = service_manifest(tmp_path)
    secret = tree / "secret"
    setxattr_or_skip(secret, "trusted.x", b"1", "trusted xattrs")
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    hand_over(manifest)
    secret.chmod(0o600)
    r = integrityd("accept", "--all", "-m", manifest, prefix=AS_SERVICE)
    assert r.returncode == 0, r.stdout + r.stderr
    r = integrityd("check", "--json", "-m", manifest)
    assert (r.returncode, findings(r)) == (0, []), r.stdout + r.stderr


def test_a_selinux_label_is_reported(tree: Path, manifest: Path) -> None:
    """A changed label is its own finding (written as a plain xattr where no LSM runs)."""
    secret = tree / "secret"
    label = b"system_u:object_r:shadow_t:s0\x00"
    code, found = checked(
        tree,
        manifest,
        lambda: setxattr_or_skip(secret, "security.selinux", label, "SELinux labels"),
    )
    e = only(found, secret)
    assert (code, e["changes"]) == (4, ["selinux"])
    assert e["file"]["selinux"] == "system_u:object_r:shadow_t:s0"


def test_a_root_that_does_not_check_them_does_not_read_them(
    tree: Path, manifest: Path, tmp_path: Path
) -> None:
    """check: [content] leaves the attributes unread, unrecorded and uncompared."""
    config = tmp_path / "c.yaml"
    config.write_text(f"manifest: {manifest}\nroots:\n  - path: {tree}\n    check: [content]\n")
    assert integrityd("init", "-c", config).returncode == 0
    try:
        os.setxattr(tree / "secret", "user.x", b"1")
    except OSError as e:
        skip_unless_supported(e, "user xattrs")
    r = integrityd("check", "--json", "-c", config)
    assert (r.returncode, findings(r)) == (0, []), r.stdout


def test_decoders_show_what_the_tools_show() -> None:
    """getcap, getfacl and getfattr's notations, from raw values."""
    assert caps_text(caps_v2(CAP_NET_RAW, CAP_SETUID)) == "cap_setuid,cap_net_raw=ep"
    assert caps_text(caps_v2(CAP_NET_RAW, effective=False)) == "cap_net_raw=p"
    v3 = struct.pack("<IIIIII", 0x03000001, 1 << CAP_NET_RAW, 0, 0, 0, 1000)
    assert caps_text(v3) == "cap_net_raw=ep [rootid=1000]"
    assert caps_text(b"") == ""
    default = acl((0x01, 7, UNDEFINED_ID), (0x08, 5, 100), (0x04, 5, UNDEFINED_ID),
                  (0x10, 5, UNDEFINED_ID), (0x20, 0, UNDEFINED_ID))  # fmt: skip
    assert acl_text(default, "d:") == "d:u::rwx,d:g:100:r-x,d:g::r-x,d:m::r-x,d:o::---"
    assert xattr_value(b"hello") == '"hello"'
    assert xattr_value(b"\xff\x00") == "0s/wA="
    assert flag_names(0x10 | 0x20 | 0x80000) == ["immutable", "append_only"]  # extents: not shown
    assert flag_names(-1) is None


@needs_root
@pytest.mark.skipif(not has_commit(SCHEMA_2_RELEASE), reason="needs the git history (a full clone)")
def test_a_manifest_from_the_previous_release_upgrades_without_spurious_findings(
    tree: Path, tmp_path: Path
) -> None:
    """Schema 2 knew none of these: not compared (one notice), then compared once accepted."""
    os.setxattr(tree / "app", "security.capability", caps_v2(CAP_NET_RAW))  # before: kept
    manifest = tmp_path / "m.db"
    r = integrityd_of(SCHEMA_2_RELEASE, tmp_path, "init", "-m", manifest, tree)
    assert r.returncode == 0, r.stderr

    r = integrityd("check", "--json", "-m", manifest)
    assert (r.returncode, findings(r)) == (0, []), r.stdout
    notices = [line for line in r.stderr.splitlines() if "attributes_not_recorded" in line]
    assert len(notices) == 1, r.stderr
    assert '"entries": 5' in notices[0]  # the root, sub, and three files

    assert integrityd("accept", "-m", manifest, "--all").returncode == 0
    os.setxattr(tree / "app", "security.capability", caps_v2(CAP_SETUID))
    r = integrityd("check", "--json", "-m", manifest)
    assert "attributes_not_recorded" not in r.stderr
    e = only([e for e in events(r) if "file" in e], tree / "app")
    assert (r.returncode, e["changes"]) == (4, ["capabilities"])
    assert (e["baseline"]["capabilities"], e["file"]["capabilities"]) == (
        "cap_net_raw=ep",
        "cap_setuid=ep",
    )
    assert "integrityd" not in e  # it had capabilities before: none gained


def test_the_daemon_reports_an_attribute_change_as_it_happens(
    tree: Path, manifest: Path, watcher: Callable[..., Watcher]
) -> None:
    """An xattr set under the running daemon: one metadata event, with the same fields."""
    secret = tree / "secret"
    try:
        os.setxattr(secret, "user.probe", b"x")
        os.removexattr(secret, "user.probe")
    except OSError as error:
        skip_unless_supported(error, "user xattrs")
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    w = watcher("-m", manifest)
    w.ready()
    w.scanned()
    os.setxattr(secret, "user.x", b"1")
    e = w.wait("metadata", secret)
    assert (e["changes"], e["file"]["xattrs"]) == (["xattrs"], {"user.x": '"1"'})
    assert w.stop() == 0
    assert w.findings() == [("metadata", str(secret))]


@needs_root
def test_mtree_export_carries_links_devices_and_flags(tree: Path, manifest: Path) -> None:
    """What mtree can hold of these: nlink, a device's numbers, and the flags it names."""
    node = tree / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    try:
        set_flags(tree / "secret", add=IMMUTABLE)
    except OSError as e:
        skip_unless_supported(e, "inode flags")
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    r = integrityd("export", "-m", manifest, "--format", "mtree", "--relative-to", tree)
    assert r.returncode == 0, r.stderr
    lines = {line.split(" ", 1)[0]: line for line in r.stdout.splitlines()}
    assert " nlink=1 flags=schg size=9 sha256digest=" in lines["secret"]
    assert " device=native,1,3" in lines["null"]
    assert "flags=" not in lines["app"]
