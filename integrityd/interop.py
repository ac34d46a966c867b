r"""Checksum-file formats that other tools read and write: export (and, later, import).

Each format escapes names its own way, so that the files round-trip through the tools
that own the format:

- ``sha256sum``: ``HEX  NAME``. A name holding a backslash or a newline is written as
  GNU coreutils does: the line starts with ``\``, and the name has ``\\`` and ``\n``.
- ``bsd``: ``SHA256 (NAME) = HEX`` (``sha256sum --tag``), with the same escaping.
- ``hashdeep``: the HASHDEEP-1.0 header, then ``SIZE,HEX,NAME``. The format cannot hold
  a newline in a name: such files are left out and counted.
- ``mtree``: one line per entry (files, directories, symlinks, special files) with
  type, mode, uid, gid, size, mtime and ``sha256digest``; names use mtree's ``\ooo``
  octal escapes for whitespace, ``\``, ``#``, ``=`` and non-printable bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from integrityd.events import FileState

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
    if s.type == "file":
        fields.append(b"size=%d" % s.size)
        if s.sha256 is not None:
            fields.append(b"sha256digest=" + s.sha256.hex().encode())
    if s.target is not None:
        fields.append(b"link=" + _mtree_escape(s.target))
    return _mtree_escape(name) + b" " + b" ".join(fields) + b"\n"
