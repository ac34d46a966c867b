"""A directory too big to hold: read and compared in batches, with exact findings.

5,000 entries is enough to take the batch path (above scan.HUGE_DIR); the memory
bound itself is measured by benchmarks/huge_dir.py on a million entries.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from integrityd.scan import HUGE_DIR

from .conftest import findings, integrityd, summary

ENTRIES = 5000


@pytest.fixture
def huge(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    big = root / "big"
    big.mkdir(parents=True)
    for i in range(ENTRIES):
        (big / f"f{i:05d}").write_bytes(b"%d\n" % i)
    (big / "sub").mkdir()
    (big / "sub" / "inner").write_bytes(b"inner\n")
    assert ENTRIES > HUGE_DIR
    return root


def test_every_change_in_a_huge_directory_is_reported_once(huge: Path, manifest: Path) -> None:
    """Modified, removed, added and a subdirectory's content: each exactly once."""
    assert integrityd("init", "-m", manifest, huge).returncode == 0
    big = huge / "big"
    (big / "f00007").write_bytes(b"changed\n")
    (big / "f04999").write_bytes(b"changed too\n")
    for i in (0, 2500, 4998):
        (big / f"f{i:05d}").unlink()
    (big / "new").write_bytes(b"new\n")
    (big / "sub" / "inner").write_bytes(b"inner, changed\n")
    r = integrityd("check", "--json", "-m", manifest)
    assert r.returncode == 7, r.stderr
    assert sorted(findings(r)) == sorted(
        [
            ("added", str(big / "new")),
            ("modified", str(big / "f00007")),
            ("modified", str(big / "f04999")),
            ("modified", str(big / "sub" / "inner")),
            *(("removed", str(big / f"f{i:05d}")) for i in (0, 2500, 4998)),
        ]
    )
    assert summary(r)["files"] == ENTRIES - 3 + 1 + 4  # entries, plus root, big, sub, inner

    assert integrityd("accept", "--all", "-m", manifest).returncode == 0
    r = integrityd("check", "--json", "-m", manifest)
    assert (r.returncode, findings(r)) == (0, []), r.stdout


def test_entries_newly_excluded_from_a_huge_directory_leave_quietly(
    huge: Path, manifest: Path, tmp_path: Path
) -> None:
    """Excluded after the baseline: not reported; accept drops them from the baseline.

    Once accepted, the exclude is the baseline's: a config without it changes nothing
    until an accept records that too, which then finds the files new.
    """
    config = tmp_path / "c.yaml"
    config.write_text(f"manifest: {manifest}\nroots:\n  - path: {huge}\n")
    assert integrityd("init", "-c", config).returncode == 0
    config.write_text(
        f"manifest: {manifest}\nroots:\n  - path: {huge}\n    exclude: ['/big/f01*']\n"
    )
    r = integrityd("check", "--json", "-c", config)
    assert (r.returncode, findings(r)) == (0, []), r.stdout
    assert integrityd("accept", "--all", "-c", config).returncode == 0
    config.write_text(f"manifest: {manifest}\nroots:\n  - path: {huge}\n")
    r = integrityd("check", "--json", "-c", config)
    assert (r.returncode, findings(r)) == (0, []), r.stdout
    r = integrityd("accept", "--all", "--json", "-c", config)
    assert r.returncode == 0, r.stderr
    assert len(findings(r)) == 1000  # f01000 to f01999: not in the baseline any more
    assert {a for a, _ in findings(r)} == {"added"}
