"""The import command takes real sha256sum / BSD / hashdeep output as the baseline below a root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from integrityd.errors import ExitCode

from .conftest import events, findings, integrityd

NAMES = [b"plain.txt", b"with space.txt", b"back\\slash", b"new\nline", b"\xff\xfe.bin"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Files with names that need escaping, one directory deep."""
    root = tmp_path / "backup"
    (root / "sub").mkdir(parents=True)
    for name in NAMES:
        with open(os.fsencode(root / "sub") + b"/" + name, "wb") as f:
            f.write(b"data " * 1000 + name)
    return root


def real_sha256sum(root: Path, *flags: str) -> bytes:
    """What `sha256sum` prints when run in ``root`` over every file below it."""
    files = subprocess.run(["find", ".", "-type", "f", "-print0"], cwd=root, capture_output=True,
                           check=True).stdout.split(b"\0")[:-1]  # fmt: skip
    return subprocess.run(["sha256sum", *flags, "--", *files], cwd=root, capture_output=True,
                          check=True).stdout  # fmt: skip


@pytest.mark.parametrize("flags", [(), ("--tag",)], ids=["sha256sum", "bsd"])
def test_import_real_output_then_detect_corruption(
    tree: Path, tmp_path: Path, manifest: Path, flags: tuple[str, ...]
) -> None:
    """Real sha256sum output becomes a baseline that checks clean.

    A byte flipped with its mtime restored is then reported as corrupted.
    """
    listing = tmp_path / "SHA256SUMS"
    listing.write_bytes(real_sha256sum(tree, *flags))
    fmt = "bsd" if flags else "sha256sum"
    r = integrityd("import", "-m", manifest, "--format", fmt, "--root", tree, listing)
    assert r.returncode == 0, r.stderr
    assert integrityd("check", "-m", manifest).returncode == 0
    victim = tree / "sub" / "with space.txt"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(data)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = integrityd("check", "-m", manifest, "--json")
    assert r.returncode == ExitCode.CHANGED
    assert findings(r) == [("corrupted", str(victim))]


def test_round_trip_through_export(tree: Path, tmp_path: Path, manifest: Path) -> None:
    """An export (BSD tags) imported into a new manifest gives a baseline that checks clean."""
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    r = subprocess.run(
        [*_cli(), "export", "-m", str(manifest), "--format", "bsd", "--relative-to", str(tree)],
        capture_output=True,
        check=True,
    )
    (tmp_path / "list").write_bytes(r.stdout)
    other = tmp_path / "other.db"
    assert (
        integrityd(
            "import", "-m", other, "--format", "bsd", "--root", tree, tmp_path / "list"
        ).returncode
        == 0
    )
    assert integrityd("check", "-m", other).returncode == 0


def test_import_errors(tree: Path, tmp_path: Path, manifest: Path) -> None:
    """A malformed line is exit 16 naming file:line; a listed file that is missing is bit 8."""
    bad = tmp_path / "bad"
    bad.write_bytes(b"0" * 64 + b"  sub/plain.txt\nnot a checksum line\n")
    r = integrityd("import", "-m", manifest, "--format", "sha256sum", "--root", tree, bad)
    assert r.returncode == 16
    assert f"{bad}:2: expected 'hex  name'" in r.stderr
    assert not manifest.exists()
    missing = tmp_path / "missing"
    missing.write_bytes(b"0" * 64 + b"  sub/not-there\n" + real_sha256sum(tree))
    r = integrityd("import", "-m", manifest, "--format", "sha256sum", "--root", tree, missing)
    assert r.returncode == ExitCode.INCOMPLETE
    assert "1 listed files were not found" in r.stderr
    assert events(integrityd("check", "-m", manifest, "--json"))[-1]["summary"]["exit_code"] == 0


def _cli() -> list[str]:
    import sys  # noqa: PLC0415

    return [sys.executable, "-m", "integrityd"]
