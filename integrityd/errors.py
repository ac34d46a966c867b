"""Exit codes and the errors integrityd raises on purpose.

Findings (added, removed, changed, unreadable files) are results, not exceptions: they
form an AIDE-compatible bitmask. Fatal conditions are exceptions, each class carrying
the distinct exit code (16 and above) that ``cli.main`` returns for it::

    IntegritydError                 19 internal
    ├── UsageError                  16 bad command line
    │   └── FormatError             16 a checksum file to import is malformed
    ├── ConfigError                 17 bad or unreadable config file
    ├── ManifestError               18 manifest missing, or a path with no baseline
    │   ├── ManifestCorrupt         18 damaged, not ours, or from a newer integrityd
    │   └── ManifestLocked          20 another writer holds it
    ├── RootError                   21 a root is missing or unusable
    ├── SignatureError              22 the baseline's signature does not hold (seal.py)
    ├── WorkerDied                  19 hash workers kept dying
    ├── CollectorDied               19 the collector process ended unexpectedly
    └── Interrupted          130 / 143 SIGINT / SIGTERM; nothing was written
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from typing import ClassVar


class ExitCode(IntFlag):
    """Bits for what a run found; scripts written for AIDE already understand them."""

    OK = 0
    ADDED = 1
    REMOVED = 2
    CHANGED = 4
    INCOMPLETE = 8


class Fatal(IntEnum):
    """One code per fatal cause; never combined with the finding bits."""

    USAGE = 16
    CONFIG = 17
    MANIFEST = 18
    INTERNAL = 19
    LOCKED = 20
    ROOT = 21
    SIGNATURE = 22
    SIGINT = 130
    SIGTERM = 143


class IntegritydError(Exception):
    """Base for every error integrityd raises on purpose."""

    exit_code: ClassVar[int] = Fatal.INTERNAL


class UsageError(IntegritydError):
    """The command line asks for something impossible.

    From the parser: ``usage`` is its usage text and ``prog`` the (sub)command, so that a
    terminal gets what argparse users expect: the usage, then ``prog: error: message``.
    """

    exit_code = Fatal.USAGE

    def __init__(self, message: str, usage: str | None = None, prog: str = "integrityd") -> None:
        super().__init__(message)
        self.usage = usage
        self.prog = prog


class FormatError(UsageError):
    """A checksum file to import is malformed; the message names the file and line."""


class ConfigError(IntegritydError):
    """The config file cannot be read or is invalid; the message names file, line and key."""

    exit_code = Fatal.CONFIG

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)

    @classmethod
    def of(cls, problems: list[str], path: str) -> ConfigError:
        """All the mistakes in one config file: the first in the message, then how many more."""
        first = problems[0]
        if len(problems) == 1:
            return cls(first)
        more = f" (and {len(problems) - 1} more: see 'integrityd config check {path}')"
        return cls(first + more, tuple(problems))


class ManifestError(IntegritydError):
    """The manifest is missing, unwritable, or has no baseline for a requested path."""

    exit_code = Fatal.MANIFEST


class ManifestCorrupt(ManifestError):
    """The manifest is damaged or is not an integrityd manifest; it is never overwritten."""


class ManifestLocked(ManifestError):
    """Another process is writing the manifest."""

    exit_code = Fatal.LOCKED


class RootError(IntegritydError):
    """A root to scan does not exist or cannot be used."""

    exit_code = Fatal.ROOT


class SignatureError(IntegritydError):
    """The baseline is not what the key signed, or cannot be signed or checked.

    Changed outside integrityd, unsigned where a public key is given, signed by another
    key, older than the reader's minimum sequence number, or a signing key that cannot
    be unlocked. Nothing is compared and nothing is written.
    """

    exit_code = Fatal.SIGNATURE


class WorkerDied(IntegritydError):
    """Hash workers died faster than they could be replaced."""


class CollectorDied(IntegritydError):
    """The collector process ended without finishing its job."""


class Interrupted(IntegritydError):
    """SIGINT or SIGTERM asked the run to stop; nothing was committed."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}; nothing was changed")
        self.signum = signum

    @property
    def code(self) -> int:
        """128 + the signal number, as shells report it."""
        return 128 + self.signum
