"""classify(): the pure decision between added, corrupted, modified, metadata and unchanged."""

from __future__ import annotations

import pytest

from integrityd.compare import classify
from integrityd.config import ATTRIBUTES, DEFAULT_CHECK
from integrityd.messages import FileState

BASE = FileState(b"/r/f", "file", 10, 1_000, 2_000, 7, 0o644, 0, 0, b"\x01" * 32, None)
DEFAULT = frozenset(DEFAULT_CHECK)
ALL = ATTRIBUTES


@pytest.mark.parametrize(
    ("new", "attrs", "action", "changes"),
    [
        (BASE, DEFAULT, None, ()),
        (BASE._replace(sha256=b"\x02" * 32), DEFAULT, "corrupted", ("hash.sha256",)),
        (
            BASE._replace(sha256=b"\x02" * 32, mtime_ns=1_001),
            DEFAULT,
            "modified",
            ("hash.sha256", "mtime"),
        ),
        (BASE._replace(sha256=b"\x02" * 32, size=11), DEFAULT, "modified", ("hash.sha256", "size")),
        (
            BASE._replace(sha256=b"\x02" * 32, mtime_ns=999),
            DEFAULT,
            "backdated",
            ("hash.sha256", "mtime"),
        ),
        (
            BASE._replace(sha256=b"\x02" * 32, size=9, mtime_ns=5),
            DEFAULT,
            "backdated",
            ("hash.sha256", "size", "mtime"),
        ),
        (BASE._replace(mode=0o666), DEFAULT, "metadata", ("mode",)),
        (BASE._replace(uid=1, gid=2), DEFAULT, "metadata", ("uid", "gid")),
        (BASE._replace(mtime_ns=5), DEFAULT, None, ()),  # touch alone is not reported by default
        (BASE._replace(mtime_ns=5), ALL, "metadata", ("mtime",)),
        (BASE._replace(inode=8, ctime_ns=3), DEFAULT, None, ()),  # editors replace files on save
        (BASE._replace(inode=8, ctime_ns=3), ALL, "metadata", ("inode", "ctime")),
        (BASE._replace(sha256=b"\x02" * 32), frozenset({"mode"}), None, ()),  # content not checked
        (
            BASE._replace(type="symlink", sha256=None, target=b"x"),
            DEFAULT,
            "metadata",
            ("type", "target_path"),
        ),
        (
            BASE._replace(sha256=b"\x02" * 32, mode=0o4755),
            DEFAULT,
            "corrupted",
            ("hash.sha256", "mode"),
        ),
        (BASE._replace(error_type="permission", error="no"), DEFAULT, "unreadable", ()),
    ],
)
def test_classify_table(
    new: FileState, attrs: frozenset[str], action: str | None, changes: tuple[str, ...]
) -> None:
    """Each change is classified as a serious tool should, listing exactly what differs."""
    finding = classify(BASE, new, attrs)
    if action is None:
        assert finding is None
    else:
        assert finding is not None
        assert (finding.action, finding.changes) == (action, changes)


def test_symlink_retarget_is_metadata() -> None:
    """A symlink pointing somewhere else is a metadata change of target_path."""
    old = FileState(b"/r/l", "symlink", 1, 1, 1, 1, 0o777, 0, 0, None, b"/a")
    finding = classify(old, old._replace(target=b"/b"), DEFAULT)
    assert finding is not None
    assert (finding.action, finding.changes) == ("metadata", ("target_path",))


def test_new_path_is_added() -> None:
    """No baseline entry means added."""
    finding = classify(None, BASE, DEFAULT)
    assert finding is not None
    assert finding.action == "added"
