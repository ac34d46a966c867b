"""What an intruder can change besides content: capabilities, ACLs, labels, xattrs, inode flags.

Read from a descriptor the worker holds, never through a path an intruder could swap
between two system calls: ``flistxattr``/``fgetxattr`` and the ``FS_IOC_GETFLAGS`` ioctl
on the open file or directory; for a symlink or a special file (never opened for
reading) through ``/proc/self/fd`` of an ``O_PATH`` descriptor, which names that inode
and no other. Each is recorded in a form that compares exactly and shows well:

* ``caps``: the raw ``security.capability`` value (b"" for none), shown as ``getcap`` does;
* ``acl``: POSIX access and default ACLs in ``getfacl``'s short form with numeric ids
  (``u::rw-,u:65534:r--,...``; "" when the mode bits say it all);
* ``selinux``: the label ("" for none);
* ``xattrs``: every other extended attribute as canonical JSON, values written as
  ``getfattr`` does (``"text"``, or ``0s`` and base64); "" for none;
* ``flags``: the inode flags a person sets with ``chattr`` (``FLAG_MASK``); -1 where the
  filesystem or the file type has none (``lsattr`` says "Operation not supported").

A filesystem without extended attributes (ENOTSUP) has none to record: that is not an
error. ``None`` in a baseline means "not recorded" (a manifest from before, or a root
whose ``check`` leaves them out): never compared.
"""

from __future__ import annotations

import array
import base64
import errno
import fcntl
import json
import os
import struct

Extra = tuple[int | None, bytes | None, str | None, str | None, str | None]
"""(flags, caps, acl, selinux, xattrs), in FileState's order."""

NOT_READ: Extra = (None, None, None, None, None)
_PLAIN: Extra = (0, b"", "", "", "")  # most files: no flags, no extended attributes

CAPS = "security.capability"
SELINUX = "security.selinux"
ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
_OWN = frozenset({CAPS, SELINUX, ACL_ACCESS, ACL_DEFAULT})

_FS_IOC_GETFLAGS = 0x80086601  # _IOR('f', 1, long) on 64-bit Linux; the kernel writes an int
_UNSUPPORTED = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL})

# chattr's flags, by bit, with the names lsattr -l shows (lower case, '_' for spaces).
FLAG_NAMES = {
    0x00000001: "secure_deletion",
    0x00000002: "undelete",
    0x00000004: "compression_requested",
    0x00000008: "synchronous_updates",
    0x00000010: "immutable",
    0x00000020: "append_only",
    0x00000040: "no_dump",
    0x00000080: "no_atime",
    0x00000400: "dont_compress",
    0x00000800: "encrypted",
    0x00004000: "journaled_data",
    0x00008000: "no_tailmerging",
    0x00010000: "synchronous_directory_updates",
    0x00020000: "top_of_directory_hierarchies",
    0x00100000: "verity",
    0x00800000: "no_cow",
    0x02000000: "dax",
    0x20000000: "project_hierarchy",
    0x40000000: "casefold",
}
FLAG_MASK = sum(FLAG_NAMES)
"""The flags recorded. Left out, because the filesystem sets them on its own as files
grow (an ext4 directory becomes ``indexed``, small data leaves ``inline_data``):
indexed, extents, inline_data, huge_file, ea_inode and ext2's compression state."""


def flag_buffer() -> array.array[int]:
    """Room for the ioctl's answer: a C int, read back as ``buf[0]`` (no int.from_bytes)."""
    return array.array("i", (0,))


def from_fd(fd: int, buf: array.array[int] | None = None) -> Extra:
    """The attributes of an open regular file or directory.

    Per file on the hot path: one ioctl and one flistxattr where a file has no xattrs
    (most have none), with as few Python calls around them as can be. ``buf``: a
    ``flag_buffer()`` for the ioctl's answer, reused by the caller.
    """
    if buf is None:
        buf = flag_buffer()
    try:
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf, True)  # the kernel writes an int into buf
        flags = buf[0] & FLAG_MASK
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
        flags = -1
    try:
        if not os.listxattr(fd):
            return _PLAIN if flags == 0 else (flags, b"", "", "", "")
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
        return (flags, b"", "", "", "")
    return (flags, *_xattrs(fd))


def from_o_path(fd: int) -> Extra:
    """The attributes of a symlink or special file open with O_PATH (no inode flags)."""
    try:
        return (-1, *_xattrs(f"/proc/self/fd/{fd}"))
    except FileNotFoundError:
        return NOT_READ  # no /proc: nothing safe to read them through


def _xattrs(target: int | str) -> tuple[bytes, str, str, str]:
    """(caps, acl, selinux, other xattrs) of a descriptor or a /proc/self/fd path."""
    try:
        names = os.listxattr(target)
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            return b"", "", "", ""
        raise
    if not names:
        return b"", "", "", ""  # the common case: one system call
    values: dict[str, bytes] = {}
    for name in names:
        try:
            values[name] = os.getxattr(target, name)
        except OSError as e:
            if e.errno != errno.ENODATA:  # removed since the listing: not there
                raise
    acl = ",".join(
        part
        for part in (
            acl_text(values.get(ACL_ACCESS, b"")),
            acl_text(values.get(ACL_DEFAULT, b""), "d:"),
        )
        if part
    )
    label = values.get(SELINUX, b"").rstrip(b"\0").decode("utf-8", "backslashreplace")
    rest = {n: xattr_value(v) for n, v in sorted(values.items()) if n not in _OWN}
    other = json.dumps(rest, separators=(",", ":")) if rest else ""
    return values.get(CAPS, b""), acl, label, other


def xattr_value(value: bytes) -> str:
    """A value as ``getfattr`` writes it: ``"text"`` if printable UTF-8, else ``0s`` base64."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable():
        return f'"{text}"'
    return "0s" + base64.b64encode(value).decode("ascii")


def xattrs_dict(recorded: str | None) -> dict[str, str]:
    """The recorded ``xattrs`` as a name -> value mapping (empty for none)."""
    return json.loads(recorded) if recorded else {}


# -- trusted.*: seen only with CAP_SYS_ADMIN -------------------------------------------

TRUSTED = "trusted."
_FULL_ID_MAP = ["0", "0", "4294967295"]  # /proc/self/uid_map of the initial user namespace
_CAP_SYS_ADMIN = 21


def sees_trusted() -> bool:
    """Whether this process is shown ``trusted.*`` xattrs at all.

    The kernel lists them only to a process with CAP_SYS_ADMIN in the initial user
    namespace, and to anyone else lists a file that has them as if it had none. The
    shipped units run as an unprivileged user with CAP_DAC_READ_SEARCH alone, so a
    baseline recorded by root (``sudo integrityd accept``) holds names they never see.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
        with open("/proc/self/uid_map", encoding="ascii") as f:
            initial = f.read().split() == _FULL_ID_MAP
    except (OSError, StopIteration, ValueError):
        return False
    return initial and bool(caps >> _CAP_SYS_ADMIN & 1)


def _has_trusted(recorded: str | None) -> bool:
    """Whether the recorded ``xattrs`` holds a ``trusted.*`` name (no parse when not)."""
    if not recorded or f'"{TRUSTED}' not in recorded:
        return False
    return any(name.startswith(TRUSTED) for name in xattrs_dict(recorded))


def carry_trusted(recorded: str | None, seen: str | None) -> str | None:
    """``seen`` with the baseline's ``trusted.*`` values put back.

    For a process that cannot see them: they are not compared, and a writer keeps them
    as recorded instead of dropping what root recorded.
    """
    if seen is None or not _has_trusted(recorded):
        return seen
    merged = xattrs_dict(seen) | {
        n: v for n, v in xattrs_dict(recorded).items() if n.startswith(TRUSTED)
    }
    return json.dumps(dict(sorted(merged.items())), separators=(",", ":"))


# -- ACLs --------------------------------------------------------------------------------

_ACL_TAGS = {0x01: "u", 0x02: "u", 0x04: "g", 0x08: "g", 0x10: "m", 0x20: "o"}
_ACL_NAMED = (0x02, 0x08)  # user and group entries with an id
_ACL_VERSION = 2


def acl_text(raw: bytes, prefix: str = "") -> str:
    """An ACL xattr in getfacl's short form with numeric ids (``u:1000:r-x``)."""
    if len(raw) < 4 or struct.unpack_from("<I", raw)[0] != _ACL_VERSION:
        return ""
    parts = []
    for offset in range(4, len(raw) - 7, 8):
        tag, perm, ident = struct.unpack_from("<HHI", raw, offset)
        who = str(ident) if tag in _ACL_NAMED else ""
        rwx = "".join(c if perm & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))
        parts.append(f"{prefix}{_ACL_TAGS.get(tag, '?')}:{who}:{rwx}")
    return ",".join(parts)


# -- capabilities ------------------------------------------------------------------------

CAP_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",
    "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio",
    "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write",
    "audit_control", "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm",
    "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)  # fmt: skip
_VFS_CAP_EFFECTIVE = 0x000001


def caps_text(raw: bytes | None) -> str:
    """``security.capability`` as ``getcap`` shows it: ``cap_net_raw,cap_setuid=ep``."""
    if not raw or len(raw) < 12:
        return ""
    magic, p0, i0 = struct.unpack_from("<III", raw)
    p1 = i1 = 0
    if len(raw) >= 20:
        p1, i1 = struct.unpack_from("<II", raw, 12)
    permitted, inheritable = p0 | p1 << 32, i0 | i1 << 32
    effective = bool(magic & _VFS_CAP_EFFECTIVE)
    groups: dict[str, list[str]] = {}
    for bit in range(64):
        p, i = permitted >> bit & 1, inheritable >> bit & 1
        if not (p or i):
            continue
        flags = ("e" if effective else "") + ("i" if i else "") + ("p" if p else "")
        name = "cap_" + CAP_NAMES[bit] if bit < len(CAP_NAMES) else f"cap_{bit}"
        groups.setdefault(flags, []).append(name)
    text = " ".join(f"{','.join(names)}={flags}" for flags, names in groups.items())
    if magic >> 24 == 3 and len(raw) >= 24:  # v3: namespaced, for one user namespace's root
        text += f" [rootid={struct.unpack_from('<I', raw, 20)[0]}]"
    return text


def flag_names(flags: int | None) -> list[str] | None:
    """The recorded flags as lsattr's names; None where not recorded or not supported."""
    if flags is None or flags < 0:
        return None
    return [name for bit, name in FLAG_NAMES.items() if flags & bit]
