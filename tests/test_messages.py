"""Every message that crosses a process boundary survives pickling unchanged."""

from __future__ import annotations

import pickle

import pytest

from integrityd.config import RootConfig
from integrityd.messages import (
    DirTask,
    Failed,
    FileState,
    FileTask,
    Finding,
    Finish,
    Job,
    Ready,
    Scope,
    Summary,
    TaskResult,
)

STATE = FileState(b"/r/\xff", "file", 1, 2, 3, 4, 0o644, 5, 6, b"\x00" * 32, None)

MESSAGES = [
    STATE,
    [STATE, STATE._replace(error_type="io", error="EIO")],
    DirTask((b"/r/d", b"/r/e"), 0),
    FileTask((b"/r/a", b"/r/\xfe"), 1),
    TaskResult(
        2,
        10,
        [Finding("added", b"/r/a", None, STATE)],
        [(b"/r", b"a", "file")],
        [b"/r/x"],
        [(b"/r/d", "permission", "PermissionError: denied")],
        [(b"/r", b"a")],
        [b"/r/b"],
    ),
    Finish(),
    Ready(),
    Failed("ManifestLocked", "locked", 20),
    Summary(
        command="check", files=1, bytes=2, seconds=0.5, counts={"added": 1}, unverified=0, status=1
    ),
    Finding("modified", b"/r/f", STATE, STATE, ("hash.sha256",)),
    Job(
        command="init",
        manifest=b"/m.db",
        scopes=(Scope(RootConfig(path=b"/r"), b"/r"),),
        skip=frozenset({b"/m.db"}),
        json=True,
        progress=False,
    ),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_pickle_round_trip(msg: object) -> None:
    """Pickling and unpickling gives an equal object."""
    assert pickle.loads(pickle.dumps(msg)) == msg
