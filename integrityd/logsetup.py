"""structlog setup for diagnostics on stderr; call ``configure`` once in every process.

Child processes inherit no structlog configuration, so each runs this at start.
Findings are not logged here: they are the program's output and go to stdout.

structlog is imported when the first message is logged, not at start: its package
imports its stdlib integration, which imports asyncio and ssl, about 50 ms on every
run, and a clean audit logs nothing at all. Modules therefore take their logger from
``get_logger()`` here, and ``configure`` records the settings until structlog is
there to receive them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

from integrityd.config import LogConfig
from integrityd.shown import visible

_FOR_PROGRAMS = ("timestamp", "event", "error_type", "exit_code")
"""Fields a JSON line needs and a person reading a terminal does not."""


def _console(_logger: object, _name: str, event: MutableMapping[str, Any]) -> str:
    """One line a person can read: ``integrityd: warning: message (key=value, ...)``."""
    level = event.pop("level", "info")
    text = str(event.pop("message", None) or event.get("event"))
    for key in _FOR_PROGRAMS:
        event.pop(key, None)
    extra = ", ".join(f"{k}={v}" for k, v in event.items())
    # Messages name paths, and a path is whatever bytes an intruder chose.
    return visible(f"integrityd: {level}: {text}" + (f" ({extra})" if extra else ""))


def _clearing(render: Any) -> Any:  # noqa: ANN401 - a structlog processor
    """Start each line by erasing the terminal's line: a progress line may stand there."""

    def processor(logger: object, name: str, event: MutableMapping[str, Any]) -> str:
        return "\r\x1b[K" + str(render(logger, name, event))

    return processor


# syslog priorities (sd-daemon(3)'s <N> prefixes) of structlog's level names
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "exception": 3, "critical": 2}


def _journal_priority(render: Any) -> Any:  # noqa: ANN401 - a structlog processor
    """Start each line with its syslog priority, ``<4>`` for a warning, as journald reads.

    Without it every line is stored at the stream's default priority (6, info), and
    ``journalctl -p warning`` shows none of our warnings and errors.
    """

    def processor(logger: object, name: str, event: MutableMapping[str, Any]) -> str:
        priority = _PRIORITY.get(str(event.get("level", "info")), 6)
        return f"<{priority}>" + str(render(logger, name, event))

    return processor


def to_journal(out: TextIO) -> bool:
    """Whether ``out`` is the journal's stream: systemd says so in ``JOURNAL_STREAM``.

    It holds the device and inode of the stream it connected stderr to; a stderr
    redirected since (by a shell, a pipe) is another file and gets no prefixes.
    """
    want = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = want.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(out.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


# structlog's (and the logging module's) numbers for the method names a logger has
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "exception": 40, "critical": 50}


class _Settings:
    """The settings of this process's last ``configure``, and whether structlog has them.

    Process-wide, like structlog's own configuration, which it stands in for until then.
    """

    def __init__(self) -> None:
        self.config = LogConfig()
        self.stream: TextIO | None = None
        self.applied = False


_SETTINGS = _Settings()


def configure(cfg: LogConfig, stream: TextIO | None = None) -> None:
    """Send log lines to ``stream`` (stderr) as JSON, or as console text on a terminal."""
    _SETTINGS.config, _SETTINGS.stream, _SETTINGS.applied = cfg, stream, False
    if "structlog" in sys.modules:  # already paid for: apply now, as before
        _apply()


def _apply() -> None:
    import structlog  # noqa: PLC0415 - see the module docstring

    cfg, out = _SETTINGS.config, _SETTINGS.stream or sys.stderr
    fmt = cfg.format
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any = _console if fmt == "console" else structlog.processors.JSONRenderer()
    if fmt == "console" and out.isatty():
        renderer = _clearing(renderer)
    elif to_journal(out):
        renderer = _journal_priority(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[cfg.level]),
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    _SETTINGS.applied = True


def _discard(*_args: object, **_kwargs: object) -> None:
    pass


class _Logger:
    """Stands for a structlog logger; structlog is imported on the first call through it."""

    __slots__ = ("_real",)

    def __init__(self) -> None:
        self._real: Any = None

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - structlog's bound methods
        if _LEVELS.get(name, 100) < _LEVELS[_SETTINGS.config.level]:
            return _discard  # filtered out, as structlog would, without importing it
        if not _SETTINGS.applied:
            _apply()
        if self._real is None:
            import structlog  # noqa: PLC0415 - see the module docstring

            self._real = structlog.get_logger()  # a proxy: later configure calls still count
        return getattr(self._real, name)


def get_logger() -> Any:  # noqa: ANN401 - a structlog logger
    """A logger for a module's diagnostics (``log.warning("event", message=...)``)."""
    return _Logger()
