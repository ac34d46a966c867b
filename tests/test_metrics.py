"""Prometheus metrics: the textfile of one-shot runs and the daemon's /metrics.

Both are read back with prometheus_client's own parser.
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .conftest import Watcher, integrityd, wait_for


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
    assert (
        _value(s, "integrityd_last_run_files", command="check", roots=str(tree)) == 7
    )  # every entry
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
