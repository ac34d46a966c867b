"""What each command does, in one table: a frozen row per command, read by every process.

The processes used to branch on the command's name in some twenty places (scan, the
collector, the audit, the report). Each of those questions is a field here, so that a new
command, or a new way to accept (grown logs, package upgrades) or to sign, is one row,
and a reader sees at once how two commands differ. ``Job.policy`` gives a process its
row; the table is plain data and the same in every process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from integrityd.errors import ExitCode

Command = Literal["init", "check", "accept", "accept-grown", "accept-packages", "verify", "watch"]
Mode = Literal["read", "progress", "write", "create"]
"""How the collector opens the manifest; ``progress``: write if it may, else read."""
Ending = Literal["", "differences", "accepted"]
"""The text report's last line: none, the differences found, or the changes accepted."""


@dataclass(frozen=True, slots=True)
class Policy:
    """One command's answers; see the table below for each command's."""

    command: Command
    manifest: Mode  # how the collector opens the manifest ("read" for watch: it never writes)
    needs_baseline: bool  # a path or root without a baseline is an error (init makes one)
    writes: bool  # what is found becomes the baseline, at the end of the run
    compares: bool  # findings are classified against the baseline (init only records)
    verifies: bool  # re-hashes baselined files by age, in batches, and records when
    walks: bool  # scans the trees from their tops (verify goes by the baseline instead)
    live: bool  # a daemon: no snapshot of the baseline, short tasks, matches reported
    checks_device: bool  # a root on another device than when baselined is refused
    counts_total: bool  # the progress line's total comes from the baseline's count
    verb: str  # for the progress line
    ending: Ending
    exit_bits: ExitCode  # the bits the run's status keeps: init and accept, INCOMPLETE only
    # A writer that accepts only these findings (and writes nothing else: no new file, no
    # removal); None: all of them.
    accepts: frozenset[str] | None = None
    # accept --packages: of those findings, the collector writes only what the package
    # database vouches for (packages.acceptable); the rest are neither written nor shown.
    by_package: bool = False
    logged_as: str = ""  # a writer's action in the change log (changelog.py)


_ALL = ExitCode.ADDED | ExitCode.REMOVED | ExitCode.CHANGED | ExitCode.INCOMPLETE
_INCOMPLETE = ExitCode.INCOMPLETE  # what init and accept found is the baseline now

POLICIES: dict[Command, Policy] = {
    p.command: p
    for p in (
        Policy(
            command="init", manifest="create", needs_baseline=False, writes=True,
            compares=False, verifies=False, walks=True, live=False, checks_device=False,
            counts_total=False, verb="baselining", ending="", exit_bits=_INCOMPLETE,
            logged_as="init",
        ),
        Policy(
            command="check", manifest="read", needs_baseline=True, writes=False,
            compares=True, verifies=False, walks=True, live=False, checks_device=True,
            counts_total=True, verb="checking", ending="differences", exit_bits=_ALL,
        ),
        Policy(
            command="accept", manifest="write", needs_baseline=True, writes=True,
            compares=True, verifies=False, walks=True, live=False, checks_device=False,
            counts_total=True, verb="re-hashing", ending="accepted", exit_bits=_INCOMPLETE,
            logged_as="accept",
        ),
        Policy(
            command="accept-grown", manifest="write", needs_baseline=True, writes=True,
            compares=True, verifies=False, walks=True, live=False, checks_device=False,
            counts_total=True, verb="re-hashing", ending="accepted", exit_bits=_INCOMPLETE,
            accepts=frozenset({"grown", "rotated"}), logged_as="accept",
        ),
        Policy(
            command="accept-packages", manifest="write", needs_baseline=True, writes=True,
            compares=True, verifies=False, walks=True, live=False, checks_device=False,
            counts_total=True, verb="re-hashing", ending="accepted", exit_bits=_INCOMPLETE,
            accepts=frozenset({"added", "modified", "backdated", "metadata"}),
            by_package=True, logged_as="accept",
        ),
        Policy(
            command="verify", manifest="progress", needs_baseline=True, writes=False,
            compares=True, verifies=True, walks=False, live=False, checks_device=True,
            counts_total=False, verb="verifying", ending="differences", exit_bits=_ALL,
        ),
        Policy(
            command="watch", manifest="read", needs_baseline=True, writes=False,
            compares=True, verifies=False, walks=True, live=True, checks_device=True,
            counts_total=False, verb="watching", ending="", exit_bits=_ALL,
        ),
    )
}  # fmt: skip
