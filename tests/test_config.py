"""Config loading: valid files become frozen dataclasses; mistakes name file, line and key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from integrityd.config import DEFAULT_CHECK, Config, LogConfig, RootConfig, WatchConfig
from integrityd.configfile import load
from integrityd.errors import ConfigError

from .conftest import integrityd

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return str(p)


def test_full_config_loads(tmp_path: Path) -> None:
    """Every key is read into the matching dataclass field, with sizes and 'auto' understood."""
    path = write(
        tmp_path,
        "manifest: /var/lib/x/m.db\n"
        "workers: 3\n"
        "chunk_size: 256KiB\n"
        "report: json\n"
        "log: {format: json, level: debug}\n"
        "watch: {rescan_interval: 6h, settle: 250ms, max_pending: 5000}\n"
        "roots:\n"
        "  - path: /etc\n"
        "    exclude: ['*.swp', /mtab]\n"
        "    check: [content, mode]\n"
        "    one_filesystem: false\n"
        "  - path: /usr\n",
    )
    assert load(path) == Config(
        manifest=b"/var/lib/x/m.db",
        workers=3,
        chunk_size=256 * 1024,
        report="json",
        log=LogConfig(format="json", level="debug"),
        watch=WatchConfig(rescan_interval=6 * 3600.0, settle=0.25, max_pending=5000),
        roots=(
            RootConfig(
                path=b"/etc",
                exclude=("*.swp", "/mtab"),
                check=("content", "mode"),
                one_filesystem=False,
            ),
            RootConfig(path=b"/usr", check=DEFAULT_CHECK),
        ),
    )


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    """An empty config is valid and means all defaults; workers 'auto' is 0."""
    assert load(write(tmp_path, "")) == Config()
    assert load(write(tmp_path, "workers: auto\n")).workers == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("worker: 2\n", ":1: worker: unknown key"),
        ("workers: many\n", ":1: workers: expected 'auto' or a number >= 1, got 'many'"),
        ("workers: 0\n", ":1: workers: expected 'auto' or a number >= 1"),
        ("chunk_size: 1KiB\n", ":1: chunk_size: must be between 4KiB and 256MiB"),
        ("chunk_size: huge\n", ":1: chunk_size: expected a size"),
        ("roots:\n  - path: /etc\n  - exclude: [a]\n", ":3: roots[1]: missing required key 'path'"),
        ("roots:\n  - path: etc\n", ":2: roots[0].path: must be an absolute path"),
        ("roots:\n  - path: /etc\n    exclude: '*.swp'\n", ":3: roots[0].exclude: expected a list"),
        (
            "roots:\n  - path: /etc\n    check: [content, colour]\n",
            ":3: roots[0].check: unknown attribute 'colour'",
        ),
        (
            "roots:\n  - path: /etc\n    one_filesystem: maybe\n",
            ":3: roots[0].one_filesystem: expected true or false",
        ),
        (
            "roots:\n  - path: /etc\n    workers: 0\n",
            ":3: roots[0].workers: expected a number >= 1",
        ),
        (
            "roots:\n  - path: /etc\n    exclude:\n      - '*.swp'\n      - '[z-a]'\n",
            ":5: roots[0].exclude[1]: invalid pattern: bad character range z-a",
        ),
        (
            "roots:\n  - path: /etc\n  - path: /usr\n    exclude: ['#tmp']\n",
            ":4: roots[1].exclude[0]: a pattern that starts with '#' is a comment in .gitignore",
        ),
        ("roots:\n  - path: /etc\n    exclude: ['!']\n", ":3: roots[0].exclude[0]: invalid"),
        ("roots:\n  - path: /etc\n    exclude: [' ']\n", ":3: roots[0].exclude[0]: an empty"),
        ("roots:\n  - path: /etc\n    exclude: ['/']\n", ":3: roots[0].exclude[0]: this pattern"),
        (
            "roots:\n  - path: /srv\n    check: [content, mtime]\n  - path: /srv/inner\n",
            ":4: roots[1].path: /srv/inner lies inside /srv (roots[0], line 2); a file belongs "
            "to one root: exclude it from roots[0] to leave it out",
        ),
        (
            "roots:\n  - path: /srv/inner\n  - path: /srv\n",
            ":2: roots[0].path: /srv/inner lies inside /srv (roots[1], line 3)",
        ),
        ("roots:\n  - path: /srv\n  - path: /srv/\n", ":3: roots[1].path: /srv is also roots[0]"),
        ("log:\n  level: loud\n", ":2: log.level: must be one of"),
        ("log:\n  format: xml\n", ":2: log.format: must be auto, json or console"),
        ("report: html\n", ":1: report: must be text or json"),
        ("watch:\n  settle: soon\n", ":2: watch.settle: expected a duration like 500ms"),
        ("watch:\n  rescan_interval: -5\n", ":2: watch.rescan_interval: expected a duration"),
        ("watch:\n  max_pending: 10\n", ":2: watch.max_pending: must be >= 100"),
        ("watch:\n  settel: 1s\n", ":2: watch.settel: unknown key"),
        ("roots: [\n", ": invalid YAML"),
        ("workers: 1\nworkers: 2\n", ":2: workers: duplicate key"),
        ("- a\n- b\n", ":1: : expected a mapping"),
    ],
)
def test_mistakes_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    """Each kind of mistake is a ConfigError whose message starts with file:line: key."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(path), message
    assert expected in message, message


def test_config_check_cli_on_example() -> None:
    """The shipped example config passes `integrityd config check`."""
    r = integrityd("config", "check", REPO / "config" / "integrityd.yaml")
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_config_check_cli_reports_error_in_one_line(tmp_path: Path) -> None:
    """A bad config exits 17 with one JSON log line on stderr naming file, line and key."""
    path = write(tmp_path, "roots:\n  - path: /etc\n    excludes: []\n")
    r = integrityd("config", "check", path)
    assert r.returncode == 17
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{path}:3: roots[0].excludes: unknown key" in lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_config_others_may_write_is_refused(tmp_path: Path, what: str) -> None:
    """It names the manifest and the public key: whoever may edit it picks them (exit 17)."""
    home = tmp_path / "etc"
    home.mkdir()
    path = Path(write(home, "roots:\n  - path: /etc\n"))
    (path if what == "file" else home).chmod(0o666 if what == "file" else 0o1777)
    for command in (("config", "check", path), ("check", "-c", path)):
        r = integrityd(*command)
        assert r.returncode == 17, r.stderr
        assert "which others than its owner may write" in r.stderr or (
            "may be written by others than its owner (mode 0666)" in r.stderr
        )
        assert "could point integrityd at a manifest or key of their own" in r.stderr
    home.chmod(0o755)
    path.chmod(0o644)
    assert integrityd("config", "check", path).returncode == 0


def test_missing_config_file(tmp_path: Path) -> None:
    """A config that does not exist is a config error, not a traceback."""
    r = integrityd("check", "-c", tmp_path / "nope.yaml")
    assert r.returncode == 17
    assert "cannot read config" in r.stderr


def test_config_is_picklable_and_frozen() -> None:
    """Config can be sent to child processes and cannot be changed after loading."""
    import pickle  # noqa: PLC0415

    cfg = Config(roots=(RootConfig(path=os.fsencode("/etc")),))
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    with pytest.raises(AttributeError):
        cfg.workers = 3  # type: ignore[misc]


def test_every_mistake_is_reported_in_the_order_of_the_file(tmp_path: Path) -> None:
    """`config check` names each mistake on a line of its own; other commands the first."""
    path = write(
        tmp_path,
        "report: html\n"
        "roots:\n"
        "  - path: /etc\n"
        "    exclude: ['[z-a]', '#x']\n"
        f"  - path: {tmp_path}/missing\n"
        "workers: many\n",
    )
    r = integrityd("config", "check", path)
    assert r.returncode == 17
    assert [json.loads(line)["message"] for line in r.stderr.splitlines()] == [
        f"{path}:1: report: must be text or json, got 'html'",
        f"{path}:4: roots[0].exclude[0]: invalid pattern: bad character range z-a at position 10",
        f"{path}:4: roots[0].exclude[1]: a pattern that starts with '#' is a comment in "
        ".gitignore; write '\\#' for a name",
        f"{path}:5: roots[1].path: {tmp_path}/missing does not exist",
        f"{path}:6: workers: expected 'auto' or a number >= 1, got 'many'",
    ]
    r = integrityd("check", "-c", path)  # a root may be mounted later: not a mistake here
    assert r.returncode == 17
    [line] = r.stderr.splitlines()
    assert json.loads(line)["message"] == (
        f"{path}:1: report: must be text or json, got 'html' "
        f"(and 3 more: see 'integrityd config check {path}')"
    )


def test_yaml_nested_thousands_deep_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    """5,000 levels of lists were a RecursionError (exit 19, an 18 KB line): exit 17 now."""
    path = tmp_path / "deep.yaml"
    path.write_text("log:\n  level: info\nroots:\n" + "  - " + "[" * 5000 + "]" * 5000 + "\n")
    r = integrityd("config", "check", path)
    assert r.returncode == 17
    assert f"{path}:4: nested more than 32 levels deep" in r.stderr
    assert len(r.stderr) < 500
    assert "RecursionError" not in r.stderr


def test_a_huge_config_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """A config over 1 MiB is a mistake (or an attack): one line, exit 17."""
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * (2 << 20) + "\n")
    r = integrityd("config", "check", path)
    assert r.returncode == 17
    assert f"{path}: larger than 1024 KiB" in r.stderr


def test_config_check_for_a_reload_accepts_a_root_not_mounted_yet(tmp_path: Path) -> None:
    """The unit's ExecReload validates with --roots-may-be-missing: the daemon allows it."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"roots:\n  - path: {tmp_path / 'not-mounted'}\n")
    assert integrityd("config", "check", cfg).returncode == 17
    r = integrityd("config", "check", "--roots-may-be-missing", cfg)
    assert r.returncode == 0, r.stderr
    cfg.write_text("roots:\n  - path: /srv\n    nonsense: 1\n")
    r = integrityd("config", "check", "--roots-may-be-missing", cfg)
    assert r.returncode == 17
    assert f"{cfg}:3: roots[0].nonsense" in r.stderr
