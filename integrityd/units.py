"""Sizes, rates and durations as people write them: one parser each, for config and flags.

- A size is bytes: ``1048576``, ``256KiB``, ``4M``, ``2G``, ``1TiB``. The units are binary
  (K = 1024), as in systemd and rsync; ``KB``, ``MB``... are refused, since some read
  them as powers of 1000 and others of 1024.
- A rate is a size per second: ``100M``, ``50MiB/s``.
- A duration is one or more parts: ``500ms``, ``30s``, ``10m`` or ``10min``, ``24h``,
  ``7d``, ``1h30m``. Minutes are ``m`` or ``min``; ``M`` is a size everywhere.

Where one text could be either (a ``verify --budget`` of ``200M``: 200 minutes or 200
MiB?), it is refused with what to write instead. Every error is a ValueError whose
message a person can act on; callers add where the text came from.
"""

from __future__ import annotations

import re

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"(\d+)\s*(?:([KMGT])(?:iB|i)?|(B))?", re.IGNORECASE)
_DECIMAL = re.compile(r"(\d+)\s*([KMGT])B", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|min|s|m|h|d))+")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|min|s|m|h|d)")
_MINUTES_OR_MIB = re.compile(r"(\d+)\s*[mM]")


class Ambiguous(ValueError):
    """A text of the right kind whose meaning is unclear; the message says what to write."""


SIZE_EXAMPLES = "1048576, 256KiB, 4M or 2GiB"
DURATION_EXAMPLES = "500ms, 30s, 10m (or 10min), 24h, 7d or 1h30m"


def parse_size(text: str) -> int:
    """``256KiB`` -> 262144; ValueError with what to write otherwise."""
    body = text.strip()
    if m := _SIZE.fullmatch(body):
        return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or m.group(3) or "").upper()]
    if m := _DECIMAL.fullmatch(body):
        n, unit = m.group(1), m.group(2).upper()
        msg = (
            f"{text!r} is ambiguous (powers of 1000 or of 1024?): write {n}{unit}iB "
            f"for {n} x {_SIZE_UNITS[unit]:,} bytes, or a number of bytes"
        )
        raise Ambiguous(msg)
    msg = f"expected a size like {SIZE_EXAMPLES}, got {text!r}"
    raise ValueError(msg)


def parse_rate(text: str) -> int:
    """``100M`` or ``100MiB/s`` -> bytes per second, at least 1."""
    body = text.strip()
    body = body[:-2] if body.lower().endswith("/s") else body
    try:
        rate = parse_size(body)
    except Ambiguous:
        raise
    except ValueError:
        msg = f"expected a rate like 100M, 50MiB/s or 1G, got {text!r}"
        raise ValueError(msg) from None
    if rate < 1:
        msg = f"a rate must be at least 1 byte/s, got {text!r}"
        raise ValueError(msg)
    return rate


def parse_duration(text: str) -> float:
    """``1h30m`` -> 5400.0 seconds; ValueError with what to write otherwise."""
    body = re.sub(r"\s+", "", text)
    if _DURATION.fullmatch(body):
        return sum(float(n) * _SECONDS[unit] for n, unit in _PART.findall(body))
    if re.fullmatch(r"\d+(?:\.\d+)?M", body):
        msg = f"{text!r}: write {body[:-1]}m or {body[:-1]}min for minutes (M is a size)"
        raise Ambiguous(msg)
    msg = f"expected a duration like {DURATION_EXAMPLES}, got {text!r}"
    raise ValueError(msg)


def minutes_or_mib(text: str) -> bool:
    """True for ``200M`` or ``200m``, where either a duration or a size would do."""
    return _MINUTES_OR_MIB.fullmatch(text.strip()) is not None
