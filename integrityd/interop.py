r"""Checksum-file formats that other tools read and write: export and import.

Each format escapes names its own way, so that the files round-trip through the tools
that own the format:

- ``sha256sum``: ``HEX  NAME``. A name holding a backslash or a newline is written as
  GNU coreutils does: the line starts with ``\``, and the name has ``\\`` and ``\n``.
- ``bsd``: ``SHA256 (NAME) = HEX`` (``sha256sum --tag``), with the same escaping.
- ``hashdeep``: the HASHDEEP-1.0 header, then ``SIZE,HEX,NAME``. The format cannot hold
  a newline in a name: such files are left out and counted.
- ``mtree``: one line per entry (files, directories, symlinks, special files) with
  type, mode, uid, gid, size, mtime and ``sha256digest``, and where recorded ``nlink``,
  ``device`` (device nodes) and ``flags`` (immutable, append-only and nodump: the inode
  flags mtree has names for); names use mtree's ``\ooo``
  octal escapes for whitespace, ``\``, ``#``, ``=`` and non-printable bytes.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator

from integrityd.attributes import flag_names
from integrityd.errors import FormatError
from integrityd.hashing import from_stat
from integrityd.messages import FileState
from integrityd.paths import split

FORMATS = ("sha256sum", "bsd", "hashdeep", "mtree")

_MTREE_TYPES = {"file": "file", "dir": "dir", "symlink": "link", "fifo": "fifo",
                "socket": "socket", "char": "char", "block": "block"}  # fmt: skip


def _gnu_escape(name: bytes) -> tuple[bytes, bytes]:
    """(line prefix, name) as GNU coreutils writes them."""
    if b"\\" in name or b"\n" in name:
        return b"\\", name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n")
    return b"", name


def _mtree_escape(name: bytes) -> bytes:
    out = bytearray()
    for b in name:
        if b <= 0x20 or b >= 0x7F or b in b"\\#=":
            out += b"\\%03o" % b
        else:
            out.append(b)
    return bytes(out)


class Exporter:
    """Writes entries in one format; ``skipped`` counts names the format cannot hold."""

    def __init__(self, fmt: str, cwd: bytes) -> None:
        if fmt not in FORMATS:
            msg = f"unknown format {fmt!r}"
            raise ValueError(msg)
        self.fmt = fmt
        self.cwd = cwd
        self.skipped = 0

    def lines(self, entries: Iterable[tuple[bytes, FileState]]) -> Iterator[bytes]:
        """Lines for (name as written, entry) pairs.

        Only regular files with a digest appear, except in mtree, which lists every entry.
        """
        fmt = self.fmt
        if fmt == "hashdeep":
            yield b"%%%% HASHDEEP-1.0\n%%%% size,sha256,filename\n"
            yield (
                b"## Invoked from: "
                + self.cwd
                + b"\n## $ integrityd export --format hashdeep\n##\n"
            )
        elif fmt == "mtree":
            yield b"#mtree\n"
        for name, s in entries:
            if fmt == "mtree":
                yield _mtree_line(name, s)
                continue
            if s.type != "file" or s.sha256 is None:
                continue
            digest = s.sha256.hex().encode()
            if fmt == "sha256sum":
                prefix, escaped = _gnu_escape(name)
                yield prefix + digest + b"  " + escaped + b"\n"
            elif fmt == "bsd":
                prefix, escaped = _gnu_escape(name)
                yield prefix + b"SHA256 (" + escaped + b") = " + digest + b"\n"
            elif b"\n" in name:
                self.skipped += 1
            else:
                yield b"%d,%s,%s\n" % (s.size, digest, name)


def _mtree_line(name: bytes, s: FileState) -> bytes:
    fields = [
        b"type=" + _MTREE_TYPES.get(s.type, "file").encode(),
        b"mode=%04o" % s.mode,
        b"uid=%d" % s.uid,
        b"gid=%d" % s.gid,
        b"time=%d.%09d" % divmod(s.mtime_ns, 1_000_000_000),
    ]
    if s.nlink is not None and s.type != "dir":
        fields.append(b"nlink=%d" % s.nlink)
    if s.rdev is not None and s.type in ("char", "block"):
        fields.append(b"device=native,%d,%d" % (os.major(s.rdev), os.minor(s.rdev)))
    if flags := [_MTREE_FLAGS[n] for n in flag_names(s.flags) or () if n in _MTREE_FLAGS]:
        fields.append(b"flags=" + ",".join(flags).encode())
    if s.type == "file":
        fields.append(b"size=%d" % s.size)
        if s.sha256 is not None:
            fields.append(b"sha256digest=" + s.sha256.hex().encode())
    if s.target is not None:
        fields.append(b"link=" + _mtree_escape(s.target))
    return _mtree_escape(name) + b" " + b" ".join(fields) + b"\n"


# The inode flags mtree (libarchive's) has names for; it has none for the others.
_MTREE_FLAGS = {"immutable": "schg", "append_only": "sappnd", "no_dump": "nodump"}


_GNU_UNESCAPE = re.compile(rb"\\(\\|n|r)")
_HEX64 = re.compile(rb"^[0-9a-fA-F]{64}$")


def _gnu_unescape(name: bytes) -> bytes:
    return _GNU_UNESCAPE.sub(lambda m: {b"\\": b"\\", b"n": b"\n", b"r": b"\r"}[m.group(1)], name)


def parse(fmt: str, data: bytes, source: str) -> Iterator[tuple[bytes, bytes, int | None]]:
    """(name, digest, size if the format has it) for each entry of a checksum file.

    Raises FormatError naming the file and line for anything that is not an entry.
    """
    columns = [b"size", b"sha256", b"filename"]
    for number, raw in enumerate(data.split(b"\n"), 1):
        line = raw.rstrip(b"\r") if fmt != "sha256sum" else raw
        if not line.strip():
            continue
        where = f"{source}:{number}"
        if fmt == "hashdeep":
            if line.startswith(b"%%%% size,"):
                columns = line[5:].split(b",")
                if b"sha256" not in columns or columns[-1] != b"filename":
                    raise FormatError(f"{where}: this hashdeep file has no sha256 column")
            if line.startswith((b"%", b"#")):
                continue
            # The name is the last column and may itself hold commas.
            row = dict(zip(columns, line.split(b",", len(columns) - 1), strict=False))
            size, digest = row.get(b"size"), row.get(b"sha256", b"")
            bad_size = size is not None and not size.isdigit()
            if len(row) != len(columns) or bad_size or not _HEX64.match(digest):
                raise FormatError(f"{where}: expected {b','.join(columns).decode()}")
            yield row[b"filename"], bytes.fromhex(digest.decode()), int(size) if size else None
            continue
        escaped = line.startswith(b"\\")
        body = line[1:] if escaped else line
        if fmt == "bsd":
            if not (body.startswith(b"SHA256 (") and b") = " in body):
                raise FormatError(f"{where}: expected 'SHA256 (name) = hex'")
            name, _, digest = body[8:].rpartition(b") = ")
        else:
            digest, sep, name = body.partition(b" ")
            if not sep or not name or name[:1] not in (b" ", b"*"):
                raise FormatError(f"{where}: expected 'hex  name'")
            name = name[1:]
        if not _HEX64.match(digest):
            raise FormatError(f"{where}: not a SHA-256 digest: {digest[:70]!r}")
        yield (_gnu_unescape(name) if escaped else name), bytes.fromhex(digest.decode()), None


def baseline_rows(
    root: bytes, entries: Iterable[tuple[bytes, bytes, int | None]]
) -> tuple[list[tuple[object, ...]], list[bytes]]:
    """Manifest rows for imported digests, and the paths that could not be found.

    Metadata comes from lstat() now, so that a later check can tell corruption (same
    size and mtime) from modification. The directories between ``root`` and each file
    are recorded too; otherwise the next check would report each one as added.
    """
    base = root.rstrip(b"/") + b"/"
    rows: dict[bytes, tuple[object, ...]] = {}
    missing: list[bytes] = []
    for name, digest, _size in entries:
        path = os.path.normpath(name if name.startswith(b"/") else base + name)
        if not path.startswith(base):
            raise FormatError(f"{os.fsdecode(name)!r} lies outside {os.fsdecode(root)}")
        try:
            st = os.lstat(path)
        except OSError:
            missing.append(path)
            continue
        state = from_stat(path, st, sha256=digest if stat.S_ISREG(st.st_mode) else None)
        rows[path] = (*split(path), *state.recorded())
        parent = os.path.dirname(path)
        while parent not in rows and (parent == root or parent.startswith(base)):
            rows[parent] = (*split(parent), *from_stat(parent, os.lstat(parent)).recorded())
            parent = os.path.dirname(parent)
    return list(rows.values()), missing
