"""structlog setup for diagnostics on stderr; call ``configure`` once in every process.

Child processes inherit no structlog configuration, so each runs this at start.
Findings are not logged here: they are the program's output and go to stdout.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from integrityd.config import LogConfig


def _console(_logger: object, _name: str, event: MutableMapping[str, Any]) -> str:
    """One line a person can read: ``integrityd: warning: message (key=value, ...)``."""
    level = event.pop("level", "info")
    event.pop("timestamp", None)
    text = str(event.pop("message", None) or event.pop("event"))
    event.pop("event", None)
    extra = ", ".join(f"{k}={v}" for k, v in event.items())
    return f"integrityd: {level}: {text}" + (f" ({extra})" if extra else "")


def configure(cfg: LogConfig, stream: TextIO | None = None) -> None:
    """Send log lines to ``stream`` (stderr) as JSON, or as console text on a terminal."""
    out = stream if stream is not None else sys.stderr
    fmt = cfg.format
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any = _console if fmt == "console" else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(cfg.level.upper())
        ),
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
