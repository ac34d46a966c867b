"""The unit files say what the code means: which exit codes a restart cannot fix."""

from __future__ import annotations

import configparser
from pathlib import Path

from integrityd.errors import Fatal

UNITS = Path(__file__).resolve().parent.parent / "systemd"


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def test_the_daemon_is_not_restarted_for_what_a_restart_cannot_fix() -> None:
    """Usage, config, manifest, lock, root and signature errors end in 'failed', not a loop."""
    service = unit("integrityd.service")
    prevent = {int(code) for code in service["Service"]["RestartPreventExitStatus"].split()}
    assert prevent == {
        Fatal.USAGE, Fatal.CONFIG, Fatal.MANIFEST, Fatal.LOCKED, Fatal.ROOT, Fatal.SIGNATURE
    }  # fmt: skip
    assert Fatal.INTERNAL not in prevent  # a bug may be passing: restarted
    assert service["Service"]["Restart"] == "on-failure"
    assert int(service["Unit"]["StartLimitBurst"]) >= 1
    assert int(service["Unit"]["StartLimitIntervalSec"]) > 0
