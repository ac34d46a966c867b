"""One parser for sizes, one for durations, everywhere; what could mean two things is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from integrityd.config import Budget, parse_budget
from integrityd.configfile import load
from integrityd.errors import ConfigError
from integrityd.units import parse_duration, parse_rate, parse_size

from .conftest import integrityd


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1048576", 1 << 20),
        ("256KiB", 256 << 10),
        ("256K", 256 << 10),
        ("4M", 4 << 20),
        ("4 MiB", 4 << 20),
        ("2G", 2 << 30),
        ("1TiB", 1 << 40),
        ("100B", 100),
    ],
)
def test_sizes(text: str, value: int) -> None:
    """Binary units, as systemd and rsync read them."""
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("10m", 600.0),
        ("10min", 600.0),
        ("24h", 86400.0),
        ("7d", 604800.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1.5h", 5400.0),
    ],
)
def test_durations(text: str, value: float) -> None:
    """Durations may combine parts: 1h30m."""
    assert parse_duration(text) == value


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (parse_size, "100MB", "'100MB' is ambiguous (powers of 1000 or of 1024?): write 100MiB"),
        (parse_size, "lots", "expected a size like 1048576, 256KiB, 4M or 2GiB, got 'lots'"),
        (parse_rate, "100MB/s", "'100MB' is ambiguous"),
        (parse_rate, "fast", "expected a rate like 100M, 50MiB/s or 1G, got 'fast'"),
        (parse_rate, "0", "a rate must be at least 1 byte/s"),
        (parse_duration, "10M", "'10M': write 10m or 10min for minutes (M is a size)"),
        (parse_duration, "10", "expected a duration like 500ms, 30s, 10m (or 10min)"),
        (parse_budget, "200M", "'200M' could mean 200 minutes or 200 MiB: write 200min or 200MiB"),
        (parse_budget, "200m", "'200m' could mean 200 minutes or 200 MiB"),
        (parse_budget, "200", "'200' needs a unit"),
        (parse_budget, "8/7", "a fraction of the files must be between 0 and 1"),
    ],
)
def test_what_is_unclear_is_refused_with_what_to_write(
    parse: object, text: str, message: str
) -> None:
    """Each refusal says what to write instead."""
    with pytest.raises(ValueError, match=r".*") as info:
        parse(text)  # type: ignore[operator]
    assert str(info.value).startswith(message), str(info.value)


def test_budgets() -> None:
    """A budget is a duration, a size or a fraction, and the same parsers read it."""
    assert parse_budget("90min") == Budget(seconds=5400.0)
    assert parse_budget("1h30m") == Budget(seconds=5400.0)
    assert parse_budget("200GiB") == Budget(bytes=200 << 30)
    assert parse_budget("200G") == Budget(bytes=200 << 30)
    assert parse_budget("1/7") == Budget(fraction=(1, 7))


def test_the_command_line_refuses_a_budget_of_200M(tmp_path: Path) -> None:
    """`--budget 200M` once meant 200 minutes while `--max-rate 100M` meant 100 MiB/s."""
    r = integrityd("verify", "-m", tmp_path / "m.db", "--budget", "200M")
    assert r.returncode == 16, r.stderr
    [line] = r.stderr.splitlines()
    assert json.loads(line)["message"] == (
        "--budget: '200M' could mean 200 minutes or 200 MiB: write 200min or 200MiB"
    )
    r = integrityd("verify", "-m", tmp_path / "m.db", "--max-rate", "100MB")
    assert r.returncode == 16, r.stderr
    assert "write 100MiB for 100 x 1,048,576 bytes" in r.stderr


def test_the_config_file_uses_the_same_parsers(tmp_path: Path) -> None:
    """chunk_size and the watch durations: same words, same errors, with file:line: key."""
    path = tmp_path / "c.yaml"
    path.write_text("chunk_size: 1M\nwatch:\n  settle: 1m30s\n  rescan_interval: 1h30m\n")
    cfg = load(str(path))
    assert (cfg.chunk_size, cfg.watch.settle, cfg.watch.rescan_interval) == (1 << 20, 90.0, 5400.0)
    path.write_text("chunk_size: 256KB\n")
    with pytest.raises(ConfigError, match=r":1: chunk_size: '256KB' is ambiguous"):
        load(str(path))
    path.write_text("watch:\n  settle: 5M\n")
    with pytest.raises(ConfigError, match=r":2: watch.settle: '5M': write 5m or 5min"):
        load(str(path))
