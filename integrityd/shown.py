"""Text for a person's terminal: nothing in it may steer the terminal or hide itself.

Much of what a report shows comes from the very intruder it reports: file names, an
SELinux label or an xattr's name (any bytes root cares to write), a user name from
/etc/passwd, a package's version from dpkg's database, a command line in the change
log. Printed raw, an ESC sequence in a label erases the lines above it (ESC "[2K" and
ESC "[1A", repeated) and writes a clean report over them, a carriage return
overwrites a line's start, a newline forges a line of its own. JSON output escapes
them already (json.dumps); this is for the text a terminal or a pager shows.
"""

from __future__ import annotations


def visible(text: str) -> str:
    r"""``text`` with every character that does not show as itself written as ``\xHH``.

    Control characters (C0, DEL, C1) and Unicode format characters (category Cf: a
    right-to-left override makes "invoice", U+202E, "fdp.exe" read as
    "invoiceexe.pdf"; zero-width characters hide in plain sight), each as its UTF-8
    bytes. Everything else, backslashes included, is left as is: this is for reading,
    not for parsing back (paths are escaped reversibly before they get here, see
    report.escape_path).
    """
    if text.isascii() and text.isprintable():
        return text  # the common case, in C
    return "".join(_shown(ch) for ch in text)


def _shown(ch: str) -> str:
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:  # an undecodable byte, kept by surrogateescape: that byte
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x20 or 0x7F <= o <= 0x9F or (o > 0x9F and _hidden(ch)):
        return "".join(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
    return ch


def _hidden(ch: str) -> bool:
    import unicodedata  # noqa: PLC0415 - only for text that is not plain ASCII

    return unicodedata.category(ch) in ("Cf", "Cs")
