"""Prometheus metrics: the textfile of one-shot runs and the daemon's /metrics.

Both are read back with prometheus_client's own parser.
"""

from __future__ import annotations

import socket
import sqlite3
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .conftest import Watcher, events, integrityd, wait_for


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:  # fmt: skip
    hits = [v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()]
    assert len(hits) == 1, (name, labels, [k for k in samples if k[0] == name])
    return hits[0]


def test_check_and_verify_write_a_textfile_prometheus_parses(
    tree: Path, manifest: Path, tmp_path: Path
) -> None:
    prom = tmp_path / "integrityd.prom"
    assert integrityd("init", "-m", manifest, tree, "--metrics-file", prom).returncode == 0
    (tree / "a.txt").write_text("changed\n")
    r = integrityd("check", "-m", manifest, tree, "--metrics-file", prom)
    assert r.returncode == 4
    s = _samples(prom.read_text())
    assert _value(s, "integrityd_last_run_exit_code", command="check") == 4
    assert _value(s, "integrityd_last_run_findings", command="check", action="modified") == 1
    assert _value(s, "integrityd_last_run_findings", command="check", action="added") == 0
    assert _value(s, "integrityd_last_run_files", command="check", root=str(tree)) == 7  # all
    assert _value(s, "integrityd_signature_state", state="unsigned") == 1
    assert _value(s, "integrityd_signature_seq") == 1
    r = integrityd("verify", "-m", manifest, "--metrics-file", prom)
    s = _samples(prom.read_text())
    assert _value(s, "integrityd_last_run_exit_code", command="verify") == 4
    assert _value(s, "integrityd_verify_coverage_ratio") == 1.0
    assert _value(s, "integrityd_verify_total_files") == 4
    # A directory that does not exist: a usage error, nothing half-written.
    r = integrityd("check", "-m", manifest, tree, "--metrics-file", tmp_path / "no" / "x.prom")
    assert r.returncode == 16


def test_every_gauge_is_per_root_and_a_failed_run_says_so(tmp_path: Path, manifest: Path) -> None:
    """Two roots, a change in one: each root has its own numbers and exit code."""
    a, b = tmp_path / "a", tmp_path / "b"
    for root, n in ((a, 3), (b, 5)):
        root.mkdir()
        for i in range(n):
            (root / f"f{i}").write_bytes(b"%d" % i)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"manifest: {manifest}\nroots:\n  - path: {a}\n  - path: {b}\n")
    prom = tmp_path / "integrityd.prom"
    assert integrityd("init", "-c", cfg).returncode == 0
    (a / "f0").write_bytes(b"changed")
    (b / "new").write_bytes(b"new")
    r = integrityd("check", "-c", cfg, "--json", "--metrics-file", prom)
    assert r.returncode == 1 | 4
    s = _samples(prom.read_text())
    assert _value(s, "integrityd_last_run_exit_code", command="check", root=str(a)) == 4
    assert _value(s, "integrityd_last_run_exit_code", command="check", root=str(b)) == 1
    assert _value(s, "integrityd_last_run_files", root=str(a)) == 4  # the root and 3 files
    assert _value(s, "integrityd_last_run_files", root=str(b)) == 7
    assert _value(s, "integrityd_last_run_bytes", root=str(a)) == len(b"changed12")
    assert _value(s, "integrityd_last_run_findings", root=str(a), action="modified") == 1
    assert _value(s, "integrityd_last_run_findings", root=str(a), action="added") == 0
    assert _value(s, "integrityd_last_run_findings", root=str(b), action="added") == 1
    assert _value(s, "integrityd_last_run_timestamp_seconds", root=str(b)) > 1.7e9
    [summary] = [e["summary"] for e in events(r) if e["event"]["action"] == "summary"]
    assert [(x["path"], x["files"], x["exit_code"]) for x in summary["roots"]] == [
        (str(a), 4, 4),
        (str(b), 7, 1),
    ]
    integrityd("accept", "--all", "-c", cfg)
    (b / "f0").unlink()
    r = integrityd("verify", "-c", cfg, "--metrics-file", prom)
    assert r.returncode == 2, r.stderr
    s = _samples(prom.read_text())
    covered = [_value(s, "integrityd_verify_coverage_ratio", root=str(x)) for x in (a, b)]
    assert covered == [1.0, round(5 / 6, 6)]  # b's removed file was not verified
    assert _value(s, "integrityd_verify_total_files", root=str(b)) == 6
    assert _value(s, "integrityd_verify_oldest_age_seconds", root=str(a)) < 60
    assert _value(s, "integrityd_last_run_exit_code", command="verify", root=str(b)) == 2
    # A trigger planted in the manifest: the run is refused (18), and the textfile says so
    # for every root instead of keeping the last good run's 0.
    with sqlite3.connect(manifest) as db:
        db.execute("CREATE TRIGGER planted AFTER INSERT ON files BEGIN SELECT 1; END")
    r = integrityd("check", "-c", cfg, "--metrics-file", prom)
    assert r.returncode == 18, r.stderr
    s = _samples(prom.read_text())
    assert _value(s, "integrityd_last_run_exit_code", command="check", root=str(a)) == 18
    assert _value(s, "integrityd_last_run_exit_code", command="check", root=str(b)) == 18
    assert _value(s, "integrityd_last_run_files", command="check", root=str(b)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_watch_serves_metrics(tree: Path, manifest: Path, tmp_path: Path) -> None:
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    port = _free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"manifest: {manifest}\nroots:\n  - path: {tree}\nmetrics:\n  listen: 127.0.0.1:{port}\n"
    )
    w = Watcher(tmp_path, "-c", cfg)
    try:
        w.ready()
        w.scanned()
        (tree / "a.txt").write_text("changed\n")
        w.wait("modified", tree / "a.txt")

        def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                s = _samples(r.read().decode())
            return s if _value(s, "integrityd_watch_findings_total") >= 1 else None

        s = wait_for(scrape, 20, "the finding in /metrics")
        assert _value(s, "integrityd_watch_roots") == 1
        # The catch-up scan's entries (7) and the change; its bytes at least the new content
        assert _value(s, "integrityd_watch_root_files_checked_total", root=str(tree)) >= 8
        assert _value(s, "integrityd_watch_root_bytes_hashed_total", root=str(tree)) >= 8
        assert _value(s, "integrityd_watch_scans_total", reason="startup") == 1
        assert _value(s, "integrityd_watch_events_lost_total") == 0
        assert _value(s, "integrityd_watch_rss_bytes") > 20e6  # main, collector, workers
        assert _value(s, "integrityd_watch_watches") >= 2
        assert _value(s, "integrityd_signature_state", state="unsigned") == 1
    finally:
        assert w.stop() == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("metrics:\n  listen: localhost\n")
    r = integrityd("config", "check", bad)
    assert r.returncode == 17
    assert f"{bad}:2: metrics.listen" in r.stderr


def test_the_example_alert_rules_name_only_metrics_that_exist() -> None:
    """config/integrityd.rules.yml: valid YAML, every metric it names is one we export."""
    import re  # noqa: PLC0415

    import yaml  # noqa: PLC0415

    root = Path(__file__).resolve().parent.parent
    rules = yaml.safe_load((root / "config" / "integrityd.rules.yml").read_text())
    source = (root / "integrityd" / "metrics.py").read_text()
    exported = set(re.findall(r'"(integrityd_[a-z_]+)"', source))
    exported |= {f"{n}_total" for n in exported}  # counters get the suffix
    for rule in rules["groups"][0]["rules"]:
        for name in re.findall(r"integrityd_[a-z_]+", rule["expr"]):
            assert name in exported, (rule["alert"], name)
