"""Path escaping is unambiguous and reversible; events are valid ECS-shaped JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from integrityd.messages import FileState, Finding, Summary
from integrityd.report import (
    count,
    escape_path,
    event,
    summary_text,
    text_lines,
    unescape_path,
)

from .conftest import findings, integrityd


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"/etc/passwd", "/etc/passwd"),
        (b"/a b/\xc3\xa9t\xc3\xa9", "/a b/été"),
        (b"/bad/\xff\xfe", "/bad/\\xff\\xfe"),
        (b"/nl/a\nb", "/nl/a\\x0ab"),
        (b"/esc/\x1b[31m", "/esc/\\x1b[31m"),
        (b"/back\\slash", "/back\\\\slash"),
        (b"/lit/\\x41", "/lit/\\\\x41"),
        (b"/c1/\xc2\x85", "/c1/\\xc2\\x85"),
    ],
)
def test_escape_table(raw: bytes, text: str) -> None:
    """Known names escape to the documented text form and back."""
    assert escape_path(raw) == text
    assert unescape_path(text) == raw


@given(st.binary(min_size=1).filter(lambda b: b"\x00" not in b))
def test_escape_round_trip(raw: bytes) -> None:
    """Any name comes back byte for byte, and the text has no control characters."""
    text = escape_path(raw)
    assert unescape_path(text) == raw
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)
    json.loads(json.dumps({"p": text}, ensure_ascii=False))


def test_event_fields_are_ecs() -> None:
    """A content change carries ECS fields now and under 'baseline', and what changed."""
    old = FileState(b"/r/f", "file", 3, 10**18, 10**18, 9, 0o644, 0, 0, b"\x01" * 32, None)
    new = old._replace(sha256=b"\x02" * 32, size=4)
    e = event(Finding("modified", b"/r/f", old, new, ("hash.sha256", "size")), "check")
    assert e["event"]["action"] == "modified"
    assert e["event"]["category"] == ["file"]
    assert e["file"]["hash"]["sha256"] == "02" * 32
    assert e["baseline"]["hash"]["sha256"] == "01" * 32
    assert (e["file"]["size"], e["baseline"]["size"]) == (4, 3)
    assert e["file"]["mode"] == "0644"
    assert e["file"]["mtime"] == "2001-09-09T01:46:40.000000000Z"
    assert e["changes"] == ["hash.sha256", "size"]


def test_one_of_a_thing_is_said_in_the_singular() -> None:
    """'1 difference', '1 file', '1 baselined file': no '1 differences'."""
    one = Summary(
        command="check", files=1, bytes=10, seconds=0.5, counts={"modified": 1}, unverified=1,
        status=12,
    )  # fmt: skip
    assert summary_text(one).splitlines()[1:] == [
        "  added 0, removed 0, modified 1, backdated 0, metadata 0, corrupted 0, unreadable 0",
        "  1 baselined file could not be verified (content or directory unreadable)",
        "  1 difference (exit code 12)",
    ]
    assert summary_text(one).startswith("integrityd check: 1 file, 10 B in 0.50 s")
    many = Summary(
        command="check", files=2_000, bytes=10, seconds=0.5, counts={"modified": 1, "added": 1},
        unverified=0, status=5,
    )  # fmt: skip
    assert summary_text(many).splitlines()[-1] == "  2 differences (exit code 5)"
    assert count(1, "entry", "entries") == "1 entry"
    assert count(12_000, "entry", "entries") == "12,000 entries"


def test_every_change_label_fits_its_column() -> None:
    """A symlink's new target lines up with the other changes: no 'target_path' overflow."""
    old = FileState(b"/r/l", "symlink", 1, 1, 1, 1, 0o777, 0, 0, None, b"/a")
    new = old._replace(target=b"/etc/shadow", uid=5)
    lines = text_lines(event(Finding("metadata", b"/r/l", old, new, ("uid", "target_path")), "x"))
    assert lines == [
        "metadata   /r/l",
        "             uid      0 → 5",
        "             target   /a → /etc/shadow",
    ]


def test_a_bidi_override_in_a_name_cannot_disguise_it_in_the_text_report(
    tree: Path, manifest: Path
) -> None:
    """U+202E makes "invoice<RLO>fdp.exe" display as "invoiceexe.pdf": escaped for people.

    The JSON keeps the name as it is (a program reads what it is); the text report
    writes the override as its UTF-8 bytes, which unescape_path turns back.
    """
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    name = "invoice\u202efdp.exe"
    (tree / name).write_bytes(b"MZ")
    text = integrityd("check", "-m", manifest)
    assert "\u202e" not in text.stdout
    shown = f"{tree}/invoice\\xe2\\x80\\xaefdp.exe"
    assert f"added      {shown}" in text.stdout
    assert unescape_path(shown) == os.fsencode(tree / name)
    js = integrityd("check", "--json", "-m", manifest)
    assert ("added", f"{tree}/{name}") in findings(js)
