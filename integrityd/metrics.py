"""Prometheus metrics: a textfile after each one-shot run, and /metrics from the daemon.

A one-shot command (``init``, ``check``, ``accept``, ``verify``) with ``--metrics-file``
(or ``metrics.textfile``) writes node_exporter's textfile format, atomically, so that
the ``verify@`` timer feeds the same dashboards as the daemon. ``watch`` with
``metrics.listen`` serves ``/metrics`` over HTTP from a thread of the main process; each
scrape reads the daemon's counters as they are then. Every name begins ``integrityd_``.

prometheus_client is imported only here, and only when metrics are asked for.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from integrityd.errors import ConfigError, UsageError
from integrityd.report import KINDS, escape_path

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from integrityd.messages import Summary
    from integrityd.policy import Command

SIGNATURE_STATES = ("valid", "unchecked", "unsigned")


def _registry_for(summary: Summary) -> CollectorRegistry:
    """Every gauge per root (``root``: the scope's path, a root or a PATH inside one)."""
    from prometheus_client import CollectorRegistry, Gauge  # noqa: PLC0415

    reg = CollectorRegistry()
    names = ["command", "root"]
    now = time.time()

    def gauge(name: str, text: str, extra: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, text, [*names, *extra], registry=reg)

    ended = gauge("integrityd_last_run_timestamp_seconds", "When the last run ended")
    took = gauge("integrityd_last_run_duration_seconds", "How long the last run took (all roots)")
    code = gauge("integrityd_last_run_exit_code", "The last run's exit code for this root")
    files = gauge("integrityd_last_run_files", "Entries the last run examined")
    nbytes = gauge("integrityd_last_run_bytes", "Bytes of content the last run hashed")
    unverified = gauge("integrityd_last_run_unverified_files", "Files not verified")
    findings = gauge("integrityd_last_run_findings", "Findings of the last run", ("action",))
    verify = summary.verification is not None
    if verify:
        coverage = gauge("integrityd_verify_coverage_ratio", "Share of files verified")
        total = gauge("integrityd_verify_total_files", "Files the verified root holds")
        oldest = gauge(
            "integrityd_verify_oldest_age_seconds",
            "Since the least recently verified file was verified",
        )
    for root in summary.roots:
        labels = {"command": summary.command, "root": root["path"]}
        ended.labels(**labels).set(now)
        took.labels(**labels).set(summary.seconds)
        code.labels(**labels).set(root["exit_code"])
        files.labels(**labels).set(root["files"])
        nbytes.labels(**labels).set(root["bytes"])
        unverified.labels(**labels).set(root["unverified"])
        counts = root["counts"]
        for action in (*KINDS, *sorted(set(counts) - set(KINDS))):
            findings.labels(**labels, action=action).set(counts.get(action, 0))
        if verify:
            coverage.labels(**labels).set(root["coverage"])
            total.labels(**labels).set(root["total_files"])
            oldest.labels(**labels).set(root["oldest_verified_age_s"])
    _signature(reg, ["command"], {"command": summary.command}, summary.signature)
    return reg


def _signature(
    reg: CollectorRegistry,
    names: list[str],
    labels: dict[str, str],
    sig: dict[str, object] | None,
) -> None:
    from prometheus_client import Gauge  # noqa: PLC0415

    if sig is None:
        return
    state = Gauge(
        "integrityd_signature_state",
        "The baseline's signature: 1 for the state it is in",
        [*names, "state"],
        registry=reg,
    )
    for s in SIGNATURE_STATES:
        state.labels(**labels, state=s).set(1 if sig.get("state") == s else 0)
    seq = Gauge(
        "integrityd_signature_seq",
        "The change log's sequence number (a decrease is a rolled-back baseline)",
        names,
        registry=reg,
    )
    seq.labels(**labels).set(float(str(sig.get("seq") or 0)))


def failed_summary(command: Command, starts: list[bytes], code: int) -> Summary:
    """The summary of a run that ended with the fatal ``code``: nothing examined, per root."""
    from integrityd.messages import Summary  # noqa: PLC0415

    roots = tuple(
        {"path": escape_path(start), "files": 0, "bytes": 0, "counts": {}, "unverified": 0,
         "exit_code": code}
        for start in starts
    )  # fmt: skip
    return Summary(command=command, files=0, bytes=0, seconds=0.0, counts={},
                   unverified=0, status=code, roots=roots)  # fmt: skip


def write_textfile(path: str, summary: Summary) -> None:
    """Write the run's metrics to ``path`` (node_exporter's textfile), atomically."""
    from prometheus_client import write_to_textfile  # noqa: PLC0415

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"--metrics-file: the directory of {path} does not exist")
    try:
        write_to_textfile(path, _registry_for(summary))
    except OSError as e:
        raise UsageError(f"cannot write the metrics file {path}: {e.strerror}") from e


# -- the daemon ---------------------------------------------------------------------------


@dataclass
class DaemonGauges:
    """What the daemon's /metrics shows; main fills it in, each scrape reads it."""

    roots: int = 0
    files_checked: int = 0
    findings: int = 0
    pending_paths: int = 0
    events_lost: int = 0
    backlog_restarts: int = 0
    worker_restarts: int = 0
    watches: int | None = None
    watch_limit: int | None = None
    rss_bytes: int = 0
    scans: dict[str, int] = field(default_factory=dict)  # by reason
    per_root: dict[str, tuple[int, int]] = field(default_factory=dict)  # files, bytes
    signature: dict[str, object] | None = None


class _Collector:
    """A prometheus_client collector over ``DaemonGauges``, read at every scrape."""

    def __init__(self, read: Callable[[], DaemonGauges]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        g = self._read()
        yield GaugeMetricFamily("integrityd_watch_roots", "Roots watched", value=g.roots)
        yield CounterMetricFamily(
            "integrityd_watch_files_checked", "Entries checked", value=g.files_checked
        )
        yield CounterMetricFamily("integrityd_watch_findings", "Findings", value=g.findings)
        files = CounterMetricFamily(
            "integrityd_watch_root_files_checked", "Entries checked, by root", labels=["root"]
        )
        nbytes = CounterMetricFamily(
            "integrityd_watch_root_bytes_hashed", "Bytes hashed, by root", labels=["root"]
        )
        for root, (n, b) in sorted(g.per_root.items()):
            files.add_metric([root], n)
            nbytes.add_metric([root], b)
        yield files
        yield nbytes
        yield GaugeMetricFamily(
            "integrityd_watch_pending_paths", "Paths waiting to be hashed", value=g.pending_paths
        )
        yield CounterMetricFamily(
            "integrityd_watch_events_lost",
            "inotify queue overflows (each answered by a re-scan)",
            value=g.events_lost,
        )
        yield CounterMetricFamily(
            "integrityd_watch_backlog_restarts",
            "Observer restarts that dropped a storm's queued events (each with a re-scan)",
            value=g.backlog_restarts,
        )
        yield CounterMetricFamily(
            "integrityd_watch_worker_restarts", "Workers replaced", value=g.worker_restarts
        )
        scans = CounterMetricFamily(
            "integrityd_watch_scans", "Full scans, by reason", labels=["reason"]
        )
        for reason, n in sorted(g.scans.items()):
            scans.add_metric([reason], n)
        yield scans
        if g.watches is not None:
            yield GaugeMetricFamily(
                "integrityd_watch_watches", "inotify watches held", value=g.watches
            )
        if g.watch_limit is not None:
            yield GaugeMetricFamily(
                "integrityd_watch_watch_limit", "fs.inotify.max_user_watches", value=g.watch_limit
            )
        yield GaugeMetricFamily(
            "integrityd_watch_rss_bytes", "Summed RSS of the daemon's processes", value=g.rss_bytes
        )
        if g.signature is not None:
            state = GaugeMetricFamily(
                "integrityd_signature_state", "The baseline's signature", labels=["state"]
            )
            for s in SIGNATURE_STATES:
                state.add_metric([s], 1 if g.signature.get("state") == s else 0)
            yield state


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9810`` for IPv6) as (host, port); ValueError if not."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"expected HOST:PORT, like 127.0.0.1:9810, got {text!r}")
    return host.strip("[]"), int(port)


class Server:
    """The daemon's /metrics endpoint; ``close`` stops it."""

    def __init__(self, listen: str, read: Callable[[], DaemonGauges]) -> None:
        from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

        host, port = parse_listen(listen)
        registry = CollectorRegistry()
        registry.register(_Collector(read))
        try:
            self._server, self._thread = start_http_server(port, host, registry)
        except OSError as e:
            raise ConfigError(f"metrics.listen {listen}: cannot listen: {e.strerror}") from e

    def close(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
