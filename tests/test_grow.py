"""Per-path rules, and logs that may only grow: grown, rewritten, truncated, rotated, accepted.

Real files, the real CLI and daemon, a config with ``rules``; every assertion is on the
exact findings and exit codes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import Watcher, events, findings, integrityd, summary

LOG_RULES = """\
    rules:
      - match: "*.log"
        check: [grow, mode, uid, gid]
      - match: "keep.log"
        check: [content, mode]
      - match: "logs/"
        check: [grow]
"""


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    """A root with logs: two under a *.log rule, one a later rule takes back, one below logs/."""
    root = tmp_path / "var"
    (root / "logs" / "app").mkdir(parents=True)
    (root / "syslog.log").write_bytes(b"line 1\nline 2\n")
    (root / "auth.log").write_bytes(b"login root\n")
    (root / "keep.log").write_bytes(b"kept as is\n")
    (root / "logs" / "app" / "out").write_bytes(b"started\n")
    (root / "plain.txt").write_bytes(b"text\n")
    return root


@pytest.fixture
def config(tmp_path: Path, logs: Path, manifest: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"manifest: {manifest}\nroots:\n  - path: {logs}\n{LOG_RULES}")
    assert integrityd("init", "-c", path).returncode == 0
    return path


def check(config: Path) -> tuple[int, list[dict[str, Any]]]:
    r = integrityd("check", "--json", "-c", config)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, [e for e in events(r) if "file" in e]


def acts(found: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["event"]["action"], e["file"]["path"]) for e in found]


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def test_a_log_that_only_grew_is_grown_with_exit_0(logs: Path, config: Path) -> None:
    """Appended lines are not a difference: `grown`, exit 0, counted in the summary."""
    append(logs / "syslog.log", b"line 3\n")
    append(logs / "logs" / "app" / "out", b"more\n")  # a rule on a directory covers below it
    r = integrityd("check", "--json", "-c", config)
    assert r.returncode == 0, r.stdout
    assert sorted(findings(r)) == [
        ("grown", str(logs / "logs" / "app" / "out")),
        ("grown", str(logs / "syslog.log")),
    ]
    assert summary(r)["grown"] == 2
    text = integrityd("check", "-c", config)
    assert text.returncode == 0
    assert "grown 2" in text.stdout


def test_an_old_line_edited_while_the_log_grew_is_modified(logs: Path, config: Path) -> None:
    """The intruder who edits old lines: the first bytes no longer hash to the baseline."""
    (logs / "syslog.log").write_bytes(b"line X\nline 2\nline 3\n")
    code, found = check(config)
    assert (code, acts(found)) == (4, [("modified", str(logs / "syslog.log"))])
    assert found[0]["integrityd"]["reason"] == "content before the old end (14 bytes) was rewritten"


def test_a_truncated_log_is_modified(logs: Path, config: Path) -> None:
    """A log cut short lost lines: exit 4, and the reason says by how much."""
    (logs / "syslog.log").write_bytes(b"line 1\n")
    code, found = check(config)
    assert (code, acts(found)) == (4, [("modified", str(logs / "syslog.log"))])
    assert found[0]["integrityd"]["reason"] == "truncated from 14 to 7 bytes"
    assert found[0]["changes"] == ["hash.sha256", "size"]


def test_the_last_matching_rule_wins(logs: Path, config: Path) -> None:
    """keep.log matches *.log and then keep.log: compared on content, so growth is a change."""
    append(logs / "keep.log", b"appended\n")
    append(logs / "plain.txt", b"appended\n")  # no rule: the root's default check
    code, found = check(config)
    assert (code, sorted(acts(found))) == (
        4,
        [("modified", str(logs / "keep.log")), ("modified", str(logs / "plain.txt"))],
    )


def test_a_grown_log_whose_mode_changed_is_metadata(logs: Path, config: Path) -> None:
    """Growth is fine, a chmod is not: one metadata finding names both."""
    append(logs / "auth.log", b"login mallory\n")
    (logs / "auth.log").chmod(0o666)
    code, found = check(config)
    assert (code, acts(found)) == (4, [("metadata", str(logs / "auth.log"))])
    assert found[0]["changes"] == ["mode", "hash.sha256", "size"]


def test_a_rotated_log_names_both_paths(logs: Path, config: Path) -> None:
    """syslog.log → syslog.log.1 and a fresh syslog.log: `rotated`, exit 0, nothing added."""
    # The rotated names are logs too. A rule takes effect once recorded with the root's
    # baseline, by an accept (a reader compares with what the baseline recorded).
    config.write_text(config.read_text() + '      - match: "*.log.1"\n        check: [grow]\n')
    assert integrityd("accept", "--all", "-c", config).returncode == 0
    (logs / "syslog.log").rename(logs / "syslog.log.1")
    append(logs / "syslog.log.1", b"line 3\n")  # written to until it was rotated
    (logs / "syslog.log").write_bytes(b"new day\n")
    code, found = check(config)
    assert (code, acts(found)) == (0, [("rotated", str(logs / "syslog.log"))])
    assert found[0]["integrityd"]["rotated_to"] == str(logs / "syslog.log.1")


def test_a_rotation_whose_old_content_was_edited_is_not_a_rotation(
    logs: Path, config: Path
) -> None:
    """The moved file must begin with the baseline's content, or the path is rewritten."""
    (logs / "syslog.log").rename(logs / "syslog.log.1")
    (logs / "syslog.log.1").write_bytes(b"forged\n" * 3)
    (logs / "syslog.log").write_bytes(b"new day\n")
    code, found = check(config)
    assert code == 5  # the new file is not the old one (4), and syslog.log.1 is new (1)
    assert sorted(acts(found)) == [
        ("added", str(logs / "syslog.log.1")),
        ("modified", str(logs / "syslog.log")),
    ]


def test_accept_grown_takes_growth_and_rotation_and_nothing_else(logs: Path, config: Path) -> None:
    """A daily timer may run it: grown logs advance, a rewrite and a new file stay reported."""
    append(logs / "syslog.log", b"line 3\n")
    (logs / "auth.log").write_bytes(b"login nobody\n")  # rewritten
    (logs / "new.txt").write_bytes(b"new\n")
    (logs / "plain.txt").unlink()
    r = integrityd("accept", "--grown", "--json", "-c", config)
    assert r.returncode == 0, r.stderr
    assert findings(r) == [("grown", str(logs / "syslog.log"))]
    code, found = check(config)
    assert (code, sorted(acts(found))) == (
        7,
        [
            ("added", str(logs / "new.txt")),
            ("modified", str(logs / "auth.log")),
            ("removed", str(logs / "plain.txt")),
        ],
    )
    append(logs / "syslog.log", b"line 4\n")  # grows from the accepted size on
    code, found = check(config)
    assert ("grown", str(logs / "syslog.log")) in acts(found)


def test_accept_grown_refuses_all(config: Path) -> None:
    """--grown accepts only growth: together with --all it is a usage error."""
    r = integrityd("accept", "--grown", "--all", "-c", config)
    assert r.returncode == 16
    assert "--grown" in r.stderr


def test_verify_applies_the_rules_too(logs: Path, config: Path) -> None:
    """A verify run re-hashes by the baseline, file by file: growth is still `grown`."""
    append(logs / "syslog.log", b"line 3\n")
    r = integrityd("verify", "--json", "-c", config)
    assert (r.returncode, findings(r)) == (0, [("grown", str(logs / "syslog.log"))]), r.stdout


def test_the_daemon_reports_growth_as_grown(
    logs: Path, config: Path, watcher: Callable[..., Watcher]
) -> None:
    """Each event goes through the same rules: an append is `grown`, an edit `modified`."""
    w = watcher("-c", config)
    w.ready()
    w.scanned()
    append(logs / "syslog.log", b"line 3\n")
    w.wait("grown", logs / "syslog.log")
    (logs / "auth.log").write_bytes(b"login nobody\n")
    w.wait("modified", logs / "auth.log")
    assert w.stop() == 0


@pytest.mark.parametrize(
    ("rules", "where", "says"),
    [
        ('      - match: "!"\n        check: [grow]\n', "roots[0].rules[0].match",
         "invalid pattern"),
        ('      - match: "*.log"\n        check: [grow, bogus]\n', "roots[0].rules[0].check",
         "unknown attribute 'bogus'"),
        ('      - match: "*.log"\n        check: [grow, content]\n', "roots[0].rules[0].check",
         "'grow' is used instead of 'content'"),
        ('      - check: [grow]\n', "roots[0].rules[0]", "missing required key 'match'"),
    ],
)  # fmt: skip
def test_config_check_names_a_bad_rule(
    tmp_path: Path, logs: Path, rules: str, where: str, says: str
) -> None:
    """A bad pattern or attribute in a rule: exit 17, with the file, the line and the key."""
    path = tmp_path / "bad.yaml"
    path.write_text(f"roots:\n  - path: {logs}\n    rules:\n{rules}")
    r = integrityd("config", "check", path)
    assert r.returncode == 17
    assert f"{path}:4: {where}" in r.stderr or f"{path}:5: {where}" in r.stderr, r.stderr
    assert says in r.stderr


def test_rules_are_stored_with_the_root(logs: Path, config: Path, manifest: Path) -> None:
    """A check without -c applies the rules the baseline was made with."""
    append(logs / "syslog.log", b"line 3\n")
    r = integrityd("check", "--json", "-m", manifest)
    assert (r.returncode, findings(r)) == (0, [("grown", str(logs / "syslog.log"))]), r.stdout
