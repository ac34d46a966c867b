"""Who changed a file: the package database's word on a finding (noise reduction, not proof).

After ``apt upgrade`` a check of ``/usr`` reports hundreds of modified binaries, and the
one an intruder replaced drowns among them. For each changed regular file that a package
owns, this module looks its new content up in the package database and says whether it
is what the package installed. The report sets those apart; ``accept --packages``
accepts them. An intruder with root can edit the package database too, and dpkg keeps
only MD5 digests: a match lowers the noise, it does not prove anything. Signed
baselines (seal.py) are the proof.

dpkg's database, under its admin directory (``/var/lib/dpkg``, ``--admindir``):
``info/PACKAGE[:ARCH].md5sums`` ("MD5, two spaces, the path without its leading /"),
and in ``status`` each package's version and its conffiles with their MD5. The index
of every path in the database is built at the first question and rebuilt when dpkg
has changed the database since. It keeps no paths: one 64-bit number a path, its hash
with the package's number in its low bits (0.8 MB for 95,000 paths), and a question
reads the owning package's md5sums file again for the path itself and its digest.

The digest compared is that of the content the worker hashed: the file is read again
here (MD5 and SHA-256 in one pass), and a read whose SHA-256 differs from the finding's
(the file changed since) or of another inode does not match.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from integrityd.messages import Finding
from integrityd.report import risks

ATTRIBUTED = frozenset({"added", "modified", "backdated", "metadata", "corrupted"})
"""Findings that may be a package's doing: those with a file's new content to look up."""

UPGRADE_CHANGES = frozenset({"hash.sha256", "size", "mtime", "ctime", "inode"})
"""What installing a package's file changes; a mode, an owner or capabilities are not."""

_NUMBER = (1 << 20) - 1  # the low bits of an index entry: the package's number
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Owner:
    """What the package database says of one path."""

    name: str
    version: str
    architecture: str | None
    digest: str  # hex, as the database has it
    conffile: bool  # dpkg: a configuration file, which the admin is expected to edit
    manager: str = "dpkg"
    digest_algorithm: str = "md5"


@dataclass(frozen=True, slots=True)
class _Package:
    name: str
    version: str
    architecture: str | None


class Dpkg:
    """dpkg's database under ``admindir``; paths are looked up as the host's ``/`` names them.

    On a merged-/usr system ``/bin`` is a symbolic link to ``usr/bin``, and a package may
    list ``bin/cat`` for the file a check finds at ``/usr/bin/cat``: both sides are put in
    one form by resolving the top-level links of ``/`` once.
    """

    def __init__(self, admindir: str) -> None:
        self.admindir = admindir
        self._stamp: tuple[int, ...] | None = None
        self._index = array("q")  # sorted: each path's hash, its low bits its package's number
        self._stems: list[str] = []  # md5sums file names without .md5sums, by number
        self._packages: dict[str, _Package] = {}  # by name and by name:arch
        self._conffiles: dict[bytes, tuple[str, str]] = {}  # path -> (package key, md5)
        self._aliases = _top_level_links()

    def owner(self, path: bytes) -> Owner | None:
        """The package that installed ``path`` and its digest of it; None if none did."""
        self._refresh()
        path = self._canonical(path)
        if (conffile := self._conffiles.get(path)) is not None:
            package = self._packages.get(conffile[0])
            if package is not None:
                return Owner(package.name, package.version, package.architecture,
                             conffile[1], conffile=True)  # fmt: skip
        key = hash(path) & ~_NUMBER
        i = bisect_left(self._index, key)
        while i < len(self._index) and self._index[i] & ~_NUMBER == key:
            stem = self._stems[self._index[i] & _NUMBER]
            if (digest := self._listed(stem, path)) is not None:
                package = self._packages.get(stem) or self._packages.get(stem.split(":")[0])
                version = package.version if package is not None else ""
                arch = package.architecture if package is not None else None
                return Owner(stem.split(":")[0], version, arch, digest, conffile=False)
            i += 1
        return None

    def _canonical(self, path: bytes) -> bytes:
        end = path.find(b"/", 1)
        head = path if end < 0 else path[:end]
        target = self._aliases.get(head)
        return path if target is None else target + path[len(head) :]

    def _listed(self, stem: str, path: bytes) -> str | None:
        """``path``'s digest in ``stem``'s md5sums file (read again: the index keeps hashes)."""
        with contextlib.suppress(OSError), open(self._md5sums(stem), "rb") as f:
            for line in f:
                digest, _, rel = line.rstrip(b"\n").partition(b"  ")
                if self._canonical(b"/" + rel) == path:
                    return digest.decode("ascii", "replace")
        return None

    def _md5sums(self, stem: str) -> str:
        return os.path.join(self.admindir, "info", stem + ".md5sums")

    def _refresh(self) -> None:
        """Build the index at the first question, and again whenever dpkg has written since."""
        stamp = self._stamp_now()
        if stamp == self._stamp:
            return
        self._packages, self._conffiles = self._read_status()
        stems: list[str] = []
        # By the hash's top byte, so that each part is sorted on its own: sorting all at
        # once takes a list of Python ints, 6 MB at its peak for 95,000 paths (measured),
        # which the collector's RSS would keep for months.
        parts = [array("q") for _ in range(256)]
        with (
            contextlib.suppress(FileNotFoundError),
            os.scandir(os.path.join(self.admindir, "info")) as it,
        ):
            for entry in it:
                if not entry.name.endswith(".md5sums"):
                    continue
                number = len(stems)
                if number > _NUMBER:
                    break  # a million packages: what is left is not looked up
                stems.append(entry.name[: -len(".md5sums")])
                with contextlib.suppress(OSError), open(entry.path, "rb") as f:
                    for line in f:
                        rel = line.rstrip(b"\n").partition(b"  ")[2]
                        if rel:
                            h = hash(self._canonical(b"/" + rel))
                            parts[(h >> 56) + 128].append(h & ~_NUMBER | number)
        index = array("q")
        for part in parts:
            index.extend(sorted(part))
        self._index = index
        self._stems = stems
        self._stamp = stamp

    def _stamp_now(self) -> tuple[int, ...]:
        """What changes when dpkg installs or removes anything: status and the info folder."""
        out: list[int] = []
        for name in ("status", "info"):
            try:
                st = os.stat(os.path.join(self.admindir, name))
            except OSError:
                out += [-1, -1, -1]
            else:
                out += [st.st_mtime_ns, st.st_size, st.st_ino]
        return tuple(out)

    def _read_status(self) -> tuple[dict[str, _Package], dict[bytes, tuple[str, str]]]:
        """Each package's version (by name, and by name:arch), and every conffile's MD5."""
        packages: dict[str, _Package] = {}
        conffiles: dict[bytes, tuple[str, str]] = {}
        try:
            with open(os.path.join(self.admindir, "status"), "rb") as f:
                for stanza in _stanzas(f):
                    self._add(stanza, packages, conffiles)
        except OSError:
            pass  # no database (yet): nothing is owned
        return packages, conffiles

    def _add(
        self,
        stanza: list[bytes],
        packages: dict[str, _Package],
        conffiles: dict[bytes, tuple[str, str]],
    ) -> None:
        fields, files = _stanza(stanza)
        name = fields.get("Package")
        if not name or fields.get("Status", "").split()[-1:] == ["not-installed"]:
            return
        arch = fields.get("Architecture")
        package = _Package(name, fields.get("Version", ""), arch)
        packages.setdefault(name, package)
        if arch:
            packages[f"{name}:{arch}"] = package
        for path, digest in files:
            conffiles[self._canonical(path)] = (f"{name}:{arch}" if arch else name, digest)


def _stanzas(lines: Iterable[bytes]) -> Iterator[list[bytes]]:
    """The status file's stanzas, a list of lines each, read a line at a time."""
    stanza: list[bytes] = []
    for raw in lines:
        if line := raw.rstrip(b"\n"):
            stanza.append(line)
        elif stanza:
            yield stanza
            stanza = []
    if stanza:
        yield stanza


def _stanza(stanza: list[bytes]) -> tuple[dict[str, str], list[tuple[bytes, str]]]:
    """A status stanza's single-line fields, and its Conffiles lines (path, MD5)."""
    fields: dict[str, str] = {}
    files: list[tuple[bytes, str]] = []
    key = ""
    for line in stanza:
        if line[:1] in (b" ", b"\t"):
            if key == "Conffiles":
                parts = line.split()
                # " /etc/x MD5", maybe "obsolete" or "remove-on-upgrade" after it
                if len(parts) >= 2 and b"obsolete" not in parts[2:]:
                    files.append((parts[0], parts[1].decode("ascii", "replace")))
            continue
        name, sep, value = line.partition(b":")
        if sep:
            key = name.decode("ascii", "replace")
            fields[key] = value.strip().decode("utf-8", "replace")
    return fields, files


def _top_level_links() -> dict[bytes, bytes]:
    """``/bin`` → ``/usr/bin`` and the like: the top-level directories that are links."""
    out: dict[bytes, bytes] = {}
    with contextlib.suppress(OSError), os.scandir(b"/") as it:
        for entry in it:
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if target != entry.path and os.path.isdir(target):
                    out[entry.path] = target
    return out


class Attributor:
    """Asks a package database about findings, for the collector; one per run or daemon."""

    def __init__(self, database: Dpkg) -> None:
        self.database = database

    def package(self, f: Finding) -> dict[str, Any] | None:
        """The event's ``package`` object for ``f``, or None where no package owns it."""
        new = f.new
        if (
            f.action not in ATTRIBUTED
            or new is None
            or new.type != "file"
            or new.sha256 is None
            or new.error_type is not None
        ):
            return None
        try:
            owner = self.database.owner(f.path)
        except OSError:
            return None  # a database that cannot be read says nothing
        if owner is None:
            return None
        d: dict[str, Any] = {"name": owner.name, "version": owner.version}
        if owner.architecture:
            d["architecture"] = owner.architecture
        d |= {
            "manager": owner.manager,
            "digest_algorithm": owner.digest_algorithm,
            "matches": _content_digest(f) == owner.digest,
        }
        if owner.conffile:
            d["conffile"] = True
        return d


def _content_digest(f: Finding) -> str | None:
    """MD5 (hex) of the content the worker hashed; None if the file is not that any more."""
    assert f.new is not None
    try:
        fd = os.open(f.path, _READ)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != f.new.inode:
            return None
        md5 = hashlib.md5(usedforsecurity=False)
        sha = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            md5.update(chunk)
            sha.update(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return md5.hexdigest() if sha.digest() == f.new.sha256 else None


def mismatch(package: dict[str, Any] | None) -> bool:
    """A package's file whose content is not the package's: flagged loudly.

    A conffile is not: its admin is expected to edit it, and dpkg keeps it on upgrades.
    """
    return package is not None and not package["matches"] and not package.get("conffile")


def acceptable(f: Finding, package: dict[str, Any] | None) -> bool:
    """What ``accept --packages`` takes: the package's content, and nothing else changed.

    Not a file that gained setuid, setgid, world-writable or capabilities, and not a
    changed mode, owner, ACL or flag, even with the package's content: dpkg's database
    does not record those, so it cannot vouch for them. Not ``corrupted``: the content
    changed under an unchanged size and mtime, which no package manager does.
    """
    return (
        package is not None
        and package["matches"]
        and f.action in ("added", "modified", "backdated", "metadata")
        and set(f.changes) <= UPGRADE_CHANGES
        and not risks(f.old, f.new)
    )
