"""The options a root's baseline was recorded with bind every reader; only a writer changes them.

The config is a file root can edit, the baseline's options are in the (signed)
manifest. An intruder who adds an exclude over the directory he worked in, narrows a
root's ``check`` or adds a rule must not make check, verify or the daemon look away.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import Watcher, findings, integrityd, log_lines


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A tree with a binary, a log and a plain file."""
    r = tmp_path / "r"
    (r / "bin").mkdir(parents=True)
    (r / "bin" / "tool").write_bytes(b"#!/bin/sh\nexit 0\n")
    (r / "app.log").write_bytes(b"line 1\n")
    (r / "plain").write_bytes(b"plain\n")
    return r


def config(tmp_path: Path, manifest: Path, root: Path, extra: str = "") -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"manifest: {manifest}\nroots:\n  - path: {root}\n{extra}")
    return cfg


def warned(r: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in log_lines(r) if e["event"] == name]


EDITS: dict[str, tuple[str, Callable[[Path], object], tuple[str, str]]] = {
    # the config edit, what the intruder then does, and the finding that must still come
    "exclude": (
        "    exclude: [bin]\n",
        lambda r: (r / "bin" / "tool").write_bytes(b"#!/bin/sh\nexec /tmp/.x\n"),
        ("modified", "bin/tool"),
    ),
    "check": (
        "    check: [content]\n",
        lambda r: (r / "plain").chmod(0o4777),
        ("metadata", "plain"),
    ),
    "rules": (
        "    rules: [{match: '*.log', check: [grow]}]\n",
        lambda r: (r / "app.log").write_bytes(b"line 1 edited\nline 2\n"),
        ("modified", "app.log"),
    ),
}


@pytest.mark.parametrize("command", ["check", "verify"])
@pytest.mark.parametrize("option", sorted(EDITS))
def test_a_config_edit_does_not_hide_a_change(
    tmp_path: Path, manifest: Path, root: Path, command: str, option: str
) -> None:
    """Each fails before: the edited config made the run compare with its own options."""
    edit, act, (action, rel) = EDITS[option]
    assert integrityd("init", "-c", config(tmp_path, manifest, root)).returncode == 0
    act(root)
    cfg = config(tmp_path, manifest, root, edit)
    r = integrityd(command, "-c", cfg, "--json", "--no-progress")
    assert r.returncode == 4, r.stdout + r.stderr
    assert findings(r) == [(action, str(root / rel))]
    [w] = warned(r, "root_options_differ")
    assert (w["root"], w["options"]) == (str(root), [option])


def test_a_config_root_inside_a_baselined_root_is_compared_as_that_one_recorded(
    tmp_path: Path, manifest: Path, root: Path
) -> None:
    """The config moves its root down to bin/ and excludes tool there: still compared."""
    assert integrityd("init", "-c", config(tmp_path, manifest, root)).returncode == 0
    (root / "bin" / "tool").write_bytes(b"replaced\n")
    cfg = tmp_path / "inner.yaml"
    cfg.write_text(f"manifest: {manifest}\nroots:\n  - path: {root / 'bin'}\n    exclude: [tool]\n")
    r = integrityd("check", "-c", cfg, "--json", "--no-progress")
    assert (r.returncode, findings(r)) == (4, [("modified", str(root / "bin" / "tool"))])
    [w] = warned(r, "root_options_differ")
    assert (w["root"], w["recorded_root"], w["options"]) == (
        str(root / "bin"),
        str(root),
        ["exclude"],
    )


def test_workers_from_the_config_apply_without_a_warning(
    tmp_path: Path, manifest: Path, root: Path
) -> None:
    """``workers`` paces the reads: it is not what the baseline vouches for."""
    assert integrityd("init", "-c", config(tmp_path, manifest, root)).returncode == 0
    r = integrityd("check", "-c", config(tmp_path, manifest, root, "    workers: 1\n"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "root_options" not in r.stderr


def test_accept_records_the_config_s_options_and_says_so(
    tmp_path: Path, manifest: Path, root: Path
) -> None:
    """The way to change them: an accept (signed, where the baseline is), in its report."""
    assert integrityd("init", "-c", config(tmp_path, manifest, root)).returncode == 0
    cfg = config(tmp_path, manifest, root, "    exclude: [bin]\n")
    r = integrityd("accept", "--all", "-c", cfg, "--json", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    [w] = warned(r, "root_options_changed")
    assert w["options"] == ["exclude"]
    assert 'exclude: [] -> ["bin"]' in w["message"]
    (root / "bin" / "tool").write_bytes(b"now excluded\n")
    r = integrityd("check", "-c", cfg, "--json", "--no-progress")
    assert (r.returncode, findings(r)) == (0, []), r.stdout + r.stderr
    assert "root_options" not in r.stderr


def test_config_check_says_which_options_wait_for_an_accept(
    tmp_path: Path, manifest: Path, root: Path
) -> None:
    """The config is valid (exit 0); what its baseline does not hold yet is named."""
    assert integrityd("init", "-c", config(tmp_path, manifest, root)).returncode == 0
    cfg = config(tmp_path, manifest, root, "    exclude: [bin]\n    workers: 1\n")
    r = integrityd("config", "check", cfg)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:] == [
        f'  root {root}: exclude: [] -> ["bin"]: not in its baseline yet; readers compare '
        "as recorded until an accept records them (integrityd accept --all -c CONFIG)"
    ]
    assert integrityd("accept", "--all", "-c", cfg).returncode == 0
    r = integrityd("config", "check", cfg)
    assert (r.returncode, len(r.stdout.splitlines())) == (0, 1), r.stdout


def test_the_daemon_watches_as_recorded(
    tmp_path: Path, manifest: Path, root: Path, watcher: Callable[..., Watcher]
) -> None:
    """The daemon with a config that excludes bin: a change in bin is still an event."""
    assert integrityd("init", "-c", config(tmp_path, manifest, root)).returncode == 0
    w = watcher("-c", config(tmp_path, manifest, root, "    exclude: [bin]\n"), "--json")
    w.ready()
    w.log("root_options_differ")
    w.scanned()
    os.chmod(root / "bin" / "tool", 0o4755)
    e = w.wait("metadata", root / "bin" / "tool")
    assert e["changes"] == ["mode"]
    assert w.stop() == 0
