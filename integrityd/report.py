"""How findings look: ECS JSON events, a readable text report, and the progress line.

Paths are bytes and may hold anything but NUL and ``/`` separators. They are shown as
text with a reversible escape (see ``escape_path``), so the JSON stays valid and a
name cannot inject control sequences into a terminal or a log viewer.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from integrityd.attributes import caps_text, flag_names, xattrs_dict
from integrityd.errors import ExitCode
from integrityd.messages import FileState, Finding, Summary
from integrityd.policy import POLICIES
from integrityd.shown import visible

_PLAIN = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")
_ESCAPE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")
_ECS_TYPE = {"added": "creation", "removed": "deletion", "unreadable": "info"}
_C = ExitCode.CHANGED
FINDING_BITS = {
    "added": ExitCode.ADDED, "removed": ExitCode.REMOVED, "modified": _C, "backdated": _C,
    "metadata": _C, "corrupted": _C, "unreadable": ExitCode.INCOMPLETE, "restored": ExitCode.OK,
    "grown": ExitCode.OK, "rotated": ExitCode.OK,
}  # fmt: skip
KINDS = ("added", "removed", "modified", "backdated", "metadata", "corrupted", "unreadable")
GROWTH = ("grown", "rotated")
"""Findings of files that may only grow (``grow``): counted, never a difference."""


def escape_path(path: bytes) -> str:
    r"""Text form of a path, reversible with ``unescape_path``.

    ``\\`` stands for a backslash and ``\xHH`` for each byte that is not valid UTF-8 or
    belongs to a control character (C0, DEL, C1); everything else is written as is.
    """
    if _PLAIN.fullmatch(path):
        return path.decode("ascii")
    out = []
    for ch in path.decode("utf-8", "surrogateescape"):
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= o <= 0xDCFF:  # an undecodable byte, kept by surrogateescape
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or 0x7F <= o <= 0x9F:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8"))
        else:
            out.append(ch)
    return "".join(out)


def unescape_path(text: str) -> bytes:
    """Inverse of ``escape_path``."""
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(text):
        out += text[pos : m.start()].encode("utf-8")
        tok = m.group(1)
        out += b"\\" if tok == "\\" else bytes([int(tok[1:], 16)])
        pos = m.end()
    out += text[pos:].encode("utf-8")
    return bytes(out)


def iso(ns: int) -> str:
    """Nanosecond timestamp as ISO 8601 UTC, keeping every digit."""
    seconds, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


ECS_VERSION = "8.11.0"
"""The version of the Elastic Common Schema whose field names the events use."""


class Context:
    """What every event of one process says besides its finding: the host, and names.

    Made once per collector. The names of owners and groups are looked up once each
    (as Auditbeat does, at the time of the event: a user renamed later keeps the
    name it had).
    """

    def __init__(self) -> None:
        self.host: dict[str, str] = {"name": os.uname().nodename}
        try:
            with open("/etc/machine-id") as f:
                self.host["id"] = f.read().strip()
        except OSError:
            pass  # containers and other systems without one: no host.id
        self._users: dict[int, str | None] = {}
        self._groups: dict[int, str | None] = {}

    def owner(self, uid: int) -> str | None:
        """The user name of ``uid``, or None if it has none."""
        return _named(self._users, uid, lambda: pwd.getpwuid(uid).pw_name)

    def group(self, gid: int) -> str | None:
        """The group name of ``gid``, or None if it has none."""
        return _named(self._groups, gid, lambda: grp.getgrgid(gid).gr_name)


def _named(cache: dict[int, str | None], number: int, look_up: Callable[[], str]) -> str | None:
    if number not in cache:
        try:
            cache[number] = look_up()
        except KeyError:  # no such user or group (any more): the number alone
            cache[number] = None
    return cache[number]


def _where(path: bytes, extension: bool = True) -> dict[str, Any]:
    """ECS ``file.path``, ``name``, ``directory`` and (not for directories) ``extension``."""
    name = os.path.basename(path)
    d: dict[str, Any] = {
        "path": escape_path(path),
        "name": escape_path(name),
        "directory": escape_path(os.path.dirname(path)),
    }
    if extension and (ext := os.path.splitext(name)[1][1:]):
        d["extension"] = escape_path(ext)  # "gz" of "a.tar.gz"; none for ".bashrc"
    return d


def file_fields(s: FileState, ctx: Context | None = None) -> dict[str, Any]:
    """ECS ``file.*`` fields for a state; ``ctx`` adds the owner's and group's names."""
    d = _where(s.path, s.type != "dir")
    if s.type in ("missing", "unknown"):
        return d
    d |= {
        "type": s.type,
        "size": s.size,
        "mtime": iso(s.mtime_ns),
        "ctime": iso(s.ctime_ns),
        "inode": str(s.inode),
        "mode": f"{s.mode:04o}",
        "uid": str(s.uid),
        "gid": str(s.gid),
    }
    if ctx is not None:
        if (owner := ctx.owner(s.uid)) is not None:
            d["owner"] = owner
        if (group := ctx.group(s.gid)) is not None:
            d["group"] = group
    if s.sha256 is not None:
        d["hash"] = {"sha256": s.sha256.hex()}
    if s.target is not None:
        d["target_path"] = escape_path(s.target)
    return d | _attributes(s)


def _attributes(s: FileState) -> dict[str, Any]:
    """What attributes.py reads, where recorded and present (absent: none, or not recorded)."""
    d: dict[str, Any] = {}
    if s.nlink is not None:
        d["nlink"] = s.nlink
    if s.rdev is not None and s.type in ("char", "block"):
        d["rdev"] = f"{os.major(s.rdev)}:{os.minor(s.rdev)}"
    if (names := flag_names(s.flags)) is not None:
        d["attributes"] = names
    if s.caps:
        d["capabilities"] = caps_text(s.caps)
    if s.acl:
        d["acl"] = s.acl
    if s.selinux:
        d["selinux"] = s.selinux
    if s.xattrs:
        d["xattrs"] = xattrs_dict(s.xattrs)
    return d


def risks(old: FileState | None, new: FileState | None) -> list[str]:
    """What a finding's file gained that an intruder wants: shown at a glance.

    ``setuid``/``setgid`` (a regular file), ``world_writable`` (anything but a symlink,
    whose mode means nothing), ``capabilities``; each only if the baseline lacked it.
    """
    if new is None or new.type in ("missing", "unknown"):
        return []
    out = []
    regular = new.type == "file"
    for name, bit, applies in (
        ("setuid", 0o4000, regular),
        ("setgid", 0o2000, regular),
        ("world_writable", 0o0002, new.type != "symlink"),
    ):
        if applies and new.mode & bit and (old is None or not old.mode & bit):
            out.append(name)
    if new.caps and (old is None or old.caps == b""):  # None: not recorded, so not "gained"
        out.append("capabilities")
    return out


def event(
    f: Finding,
    command: str,
    ctx: Context | None = None,
    package: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One finding as an ECS event: ``file`` is now, ``baseline`` is what was recorded.

    ``event.outcome`` is ``failure`` where the file could not be verified (it carries an
    ``error``), ``success`` otherwise: the check itself worked, whatever it found.
    ``package``: what the package database says of the file (packages.py), if it owns it.
    """
    unread = f.new is not None and f.new.error_type is not None
    d: dict[str, Any] = {
        "@timestamp": iso(time.time_ns()),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "event",
            "module": "integrityd",
            "dataset": f"integrityd.{command}",
            "category": ["file"],
            "type": [_ECS_TYPE.get(f.action, "change")],
            "action": f.action,
            "outcome": "failure" if unread else "success",
        },
        "file": file_fields(f.new, ctx) if f.new is not None else _where(f.path),
    }
    if ctx is not None:
        d["host"] = dict(ctx.host)
    if f.old is not None:
        d["baseline"] = file_fields(f.old, ctx)
    if f.changes:
        d["changes"] = list(f.changes)
    if f.new is not None and f.new.error_type is not None:
        d["error"] = {"type": f.new.error_type, "message": f.new.error}
    if package is not None:
        d["package"] = package
    ours: dict[str, Any] = {}
    risk = risks(f.old, f.new)
    if package is not None and not package["matches"] and not package.get("conffile"):
        risk.append("package_mismatch")  # a package's file that is not the package's
    if risk:
        ours["risk"] = risk
    if f.reason is not None:
        ours["reason"] = f.reason
    if f.rotated_to is not None:
        ours["rotated_to"] = escape_path(f.rotated_to)
    if ours:
        d["integrityd"] = ours
    return d


def summary_event(s: Summary, ctx: Context | None = None) -> dict[str, Any]:
    """The final JSON line of a run; ``event.duration`` in nanoseconds, as ECS defines it."""
    return {
        "@timestamp": iso(time.time_ns()),
        "ecs": {"version": ECS_VERSION},
        **({"host": dict(ctx.host)} if ctx is not None else {}),
        "event": {
            "kind": "metric",
            "module": "integrityd",
            "dataset": f"integrityd.{s.command}",
            "action": "summary",
            "duration": round(s.seconds * 1e9),
            "outcome": "failure" if s.status & ExitCode.INCOMPLETE else "success",
        },
        "summary": {
            "command": s.command,
            "files": s.files,
            "bytes": s.bytes,
            "seconds": round(s.seconds, 3),
            "bytes_per_s": round(s.bytes / s.seconds) if s.seconds > 0 else 0,
            **{k: s.counts.get(k, 0) for k in KINDS},
            **{k: s.counts[k] for k in GROWTH if s.counts.get(k)},
            "unverified": s.unverified,
            "exit_code": s.status,
            **({"restored": s.counts.get("restored", 0)} if POLICIES[s.command].live else {}),
            **(s.verification or {}),
            **({"roots": [_root_summary(r) for r in s.roots]} if s.roots else {}),
        },
        **({"signature": s.signature} if s.signature is not None else {}),
    }


def _root_summary(root: dict[str, Any]) -> dict[str, Any]:
    """One scope's part of the summary: the same keys as the whole, for its subtree."""
    counts = root["counts"]
    return {
        "path": root["path"],
        "files": root["files"],
        "bytes": root["bytes"],
        **{k: counts.get(k, 0) for k in KINDS},
        **{k: counts[k] for k in GROWTH if counts.get(k)},
        "unverified": root["unverified"],
        "exit_code": root["exit_code"],
        **{k: root[k] for k in ("total_files", "coverage", "oldest_verified_age_s") if k in root},
    }


_ABSENT_IS_NONE = frozenset({"capabilities", "acl", "selinux", "xattrs", "attributes"})
"""Fields left out of an event when the file has none: the text report says "(none)"."""


def _get(d: dict[str, Any], dotted: str) -> str:
    value: Any = d
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, list):
        value = ",".join(value) or None
    elif isinstance(value, dict):
        value = " ".join(f"{k}={v}" for k, v in value.items()) or None
    if value is None:
        return "(none)" if dotted in _ABSENT_IS_NONE else "-"
    return str(value)


_LABELS = {"hash.sha256": "sha256", "target_path": "target"}
"""Event field names too long for the text report's column of eight."""


def text_lines(ev: dict[str, Any], package: bool = True) -> list[str]:
    """A finding for people: the action and path, then each change as old → new.

    ``package``: say what the package database says of the file (False under a heading
    that says it for a group).
    """
    action = ev["event"]["action"]
    lines = [f"{action:<11}{ev['file']['path']}"]
    ours = ev.get("integrityd", {})
    if risk := [r for r in ours.get("risk", ()) if r != "package_mismatch"]:
        lines.append(f"{'':13}! {', '.join(risk).replace('_', ' ')}")
    if package and (owner := ev.get("package")):
        lines.append(f"{'':13}{_package_line(owner)}")
    if "rotated_to" in ours:
        lines.append(f"{'':13}rotated to {ours['rotated_to']}")
    if "reason" in ours:
        lines.append(f"{'':13}{ours['reason']}")
    for name in ev.get("changes", ()):
        old, new = _get(ev.get("baseline", {}), name), _get(ev["file"], name)
        label = _LABELS.get(name, name)
        lines.append(f"{'':13}{label:<8} {old} → {new}")
    if "error" in ev:  # unreadable: why; a change lstat() showed: the content went unread
        why = ev["error"]["message"]
        lines.append(
            f"{'':13}{why}" if action == "unreadable" else f"{'':13}content  not read: {why}"
        )
    # Names, labels, xattr names, package versions: an intruder writes them.
    return [visible(line) for line in lines]


def package_name(package: dict[str, Any]) -> str:
    """``coreutils 9.1-1 (dpkg)``: a package as the text report names it."""
    return f"{package['name']} {package['version']} ({package['manager']})".replace("  ", " ")


def _package_line(package: dict[str, Any]) -> str:
    name = package_name(package)
    if package["matches"]:
        return f"package  {name}: matches the package database"
    if package.get("conffile"):
        return f"package  conffile of {name}: differs from the package's (edited here?)"
    return f"! PACKAGE MISMATCH: owned by {name}, but not its content"


def count(n: int, word: str, words: str | None = None) -> str:
    """``1 file``, ``2 files``: the number (with thousands separators) and the word."""
    return f"{n:,} {word if n == 1 else words or word + 's'}"


def human_bytes(n: float) -> str:
    """1536 → '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def summary_text(s: Summary) -> str:
    """The closing lines of the text report."""
    rate = s.files / s.seconds if s.seconds > 0 else 0.0
    head = (
        f"integrityd {s.command}: {count(s.files, 'file')}, {human_bytes(s.bytes)} "
        f"in {s.seconds:.2f} s ({rate:,.0f} files/s)"
    )
    counts = ", ".join(f"{k} {s.counts.get(k, 0)}" for k in KINDS)
    counts += "".join(f", {k} {s.counts[k]}" for k in GROWTH if s.counts.get(k))
    tail = [head, f"  {counts}"]
    if s.unverified:
        tail.append(
            f"  {count(s.unverified, 'baselined file')} could not be verified "
            "(content or directory unreadable)"
        )
    differences = sum(s.counts.get(k, 0) for k in KINDS if k != "unreadable")
    ending = POLICIES[s.command].ending
    if ending == "differences":
        tail.append(
            "  all files match the baseline"
            if not differences and not s.status
            else f"  {count(differences, 'difference')} (exit code {s.status})"
        )
    elif ending == "accepted":
        accepted = differences + sum(s.counts.get(k, 0) for k in GROWTH)
        tail.append(f"  {count(accepted, 'change')} accepted into the baseline")
    if s.verification:
        v = s.verification
        tail.append(
            f"  verified {s.files:,} of {int(v['total_files']):,} files ({v['coverage']:.1%}); "
            f"least recently verified file: {v['oldest_verified_age_s'] / 3600:.1f} h ago"
        )
    if s.signature is not None:
        tail.append(f"  {signature_text(s.signature)}")
    return "\n".join(tail) + "\n"


def signature_text(sig: dict[str, object]) -> str:
    """One line on the baseline's signature, for the text report."""
    seq = f"change {sig['seq']}"
    if sig["state"] == "valid":
        return f"signature: valid, key {sig['key_id']}, {seq}, signed {sig['signed_at']}"
    if sig["state"] == "unchecked":
        return f"signature: not checked (no public key given), key {sig['key_id']}, {seq}"
    return f"signature: none (unsigned baseline), {seq}"


class Progress:
    """A one-line progress display on a terminal: files, bytes, rate and ETA."""

    def __init__(self, stream: TextIO | None, verb: str) -> None:
        self._stream = stream
        self._verb = verb
        self._start = time.monotonic()
        self._last = 0.0
        self._total: int | None = None
        self._total_bytes = 0

    def set_total(self, files: int, nbytes: int) -> None:
        """How many entries and bytes to expect (from the baseline), for the ETA."""
        self._total = files
        self._total_bytes = nbytes

    def update(self, files: int, nbytes: int) -> None:
        """Redraw at most five times a second."""
        now = time.monotonic()
        if self._stream is None or now - self._last < 0.2:
            return
        self._last = now
        elapsed = now - self._start
        rate = nbytes / elapsed if elapsed else 0.0
        # The baseline's count is an estimate: past it (new files), only the count.
        known = self._total is not None and files <= self._total
        done = f"{files:,}/{self._total:,}" if known else f"{files:,}"
        line = f"{self._verb}: {done} files, {human_bytes(nbytes)}, {human_bytes(rate)}/s"
        if known and files and self._total:
            # Whichever says longer: by files for many small ones, by bytes for a few
            # big ones (counted by files, the last 10 GiB file read as "ETA 0:00").
            left = (self._total - files) * elapsed / files
            if nbytes and self._total_bytes > nbytes:
                left = max(left, (self._total_bytes - nbytes) * elapsed / nbytes)
            eta = int(left)
            line += f", ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
        self._stream.write("\r\x1b[K" + line)
        self._stream.flush()

    def close(self) -> None:
        """Erase the line so the report starts on a clean one."""
        if self._stream is not None and self._last:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
