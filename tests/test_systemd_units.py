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


def test_a_reload_with_a_broken_config_fails_before_the_daemon_sees_it() -> None:
    """A config with a mistake fails `systemctl reload` (ExecReload validates it first)."""
    text = (UNITS / "integrityd.service").read_text()
    reload = [line for line in text.splitlines() if line.startswith("ExecReload=")]
    assert reload == [
        "ExecReload=/opt/integrityd/bin/integrityd reload "
        "-c /etc/integrityd/integrityd.yaml --pid $MAINPID"
    ]


def test_units_fail_loudly_without_their_config_and_keep_etc_read_only() -> None:
    """init@typo fails (Assert, not Condition); no unit makes /etc/integrityd writable."""
    for name in ("integrityd.service", "integrityd-init@.service", "integrityd-verify@.service"):
        text = (UNITS / name).read_text()
        assert "\nAssertPathExists=/etc/integrityd/" in text, name
        assert "ConditionPathExists" not in text, name
        assert "\nConfigurationDirectory=" not in text, name


def test_the_daemon_can_read_the_inotify_watch_limit() -> None:
    """ProcSubset=pid hid /proc/sys/fs/inotify: the watch plan ran without a limit."""
    service = unit("integrityd.service")
    assert "ProcSubset" not in service["Service"]
    assert service["Service"]["ProtectKernelTunables"] == "yes"  # read-only, still
