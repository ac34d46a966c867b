"""The command policy table: one frozen row per command, and nothing else decides."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from integrityd.errors import ExitCode
from integrityd.messages import Job
from integrityd.policy import POLICIES, Command

REPO = Path(__file__).resolve().parent.parent


def test_every_command_has_one_row_and_rows_are_frozen() -> None:
    """Each command of the Command type, and no other, has a row; no row can be changed."""
    assert set(POLICIES) == set(typing.get_args(Command))
    assert all(p.command == c for c, p in POLICIES.items())
    with pytest.raises(dataclasses.FrozenInstanceError):
        POLICIES["check"].writes = True  # type: ignore[misc]


def test_only_init_and_accept_write_and_their_status_keeps_only_incomplete() -> None:
    """What init and accept find becomes the baseline: of their findings only bit 8 counts."""
    writers = {c for c, p in POLICIES.items() if p.writes}
    assert writers == {"init", "accept", "accept-grown", "accept-packages"}
    assert POLICIES["accept-grown"].accepts == frozenset({"grown", "rotated"})
    # accept --packages: never a removal, and the collector vets each of these further
    assert POLICIES["accept-packages"].accepts == frozenset(
        {"added", "modified", "backdated", "metadata"}
    )
    assert [c for c in POLICIES if POLICIES[c].by_package] == ["accept-packages"]
    partial = ("accept-grown", "accept-packages")
    assert all(POLICIES[c].accepts is None for c in POLICIES if c not in partial)
    assert {POLICIES[c].exit_bits for c in writers} == {ExitCode.INCOMPLETE}
    assert not any(p.writes for p in POLICIES.values() if p.manifest == "read")


def test_a_job_reads_its_row() -> None:
    """Every process that gets the Job gets the same answers."""
    job = Job(command="verify", manifest=b"/m", scopes=(), skip=frozenset(), json=True,
              progress=False)  # fmt: skip
    assert job.policy is POLICIES["verify"]
    assert (job.policy.verifies, job.policy.walks, job.policy.manifest) == (
        True,
        False,
        "progress",
    )


def test_no_process_branches_on_a_command_s_name() -> None:
    """The table answers; a comparison with a command's name in the code would bypass it."""
    names = "|".join(typing.get_args(Command))
    pattern = re.compile(rf"command\s*(==|!=|in|not in)\s*[(\"'](\"?({names}))")
    found = [
        f"{path.name}:{n}"
        for path in sorted((REPO / "integrityd").glob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
