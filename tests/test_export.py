"""export writes checksum files that the owning tools accept, odd names included."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import integrityd

ODD = [
    b"plain.txt",
    b"with space.txt",
    b"back\\slash",
    b"new\nline",
    b"tab\tand #=.txt",
    b"\xff\xfe",
]


@pytest.fixture
def odd_tree(tmp_path: Path, manifest: Path) -> Path:
    """A baselined tree whose names need every kind of escaping."""
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    for name in ODD:
        with open(os.fsencode(root / "sub") + b"/" + name, "wb") as f:
            f.write(b"content of " + name)
    (root / "link").symlink_to("sub")
    assert integrityd("init", "-m", manifest, root).returncode == 0
    return root


def sha256sum_check(listing: bytes, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["sha256sum", "--strict", "-c", "-"],
        input=listing,
        cwd=cwd,
        capture_output=True,
        check=False,
    )


@pytest.mark.parametrize("fmt", ["sha256sum", "bsd"])
def test_sha256sum_accepts_relative_export(odd_tree: Path, manifest: Path, fmt: str) -> None:
    """`sha256sum --strict -c`, run in DIR, accepts every line of --relative-to DIR."""
    r = export(manifest, fmt, relative_to=odd_tree)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == len(ODD)  # one line each, newline names escaped
    check = sha256sum_check(r.stdout, odd_tree)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(b": OK\n") == len(ODD)


def test_absolute_export_and_corruption_is_caught(odd_tree: Path, manifest: Path) -> None:
    """With absolute names sha256sum -c works from anywhere, and catches a flipped byte."""
    r = export(manifest, "sha256sum")
    assert r.returncode == 0
    assert sha256sum_check(r.stdout, Path("/")).returncode == 0
    victim = odd_tree / "sub" / "plain.txt"
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF
    victim.write_bytes(data)
    check = sha256sum_check(r.stdout, Path("/"))
    assert check.returncode == 1
    assert check.stdout.count(b"FAILED") == 1


def test_hashdeep_format_and_unrepresentable_names(odd_tree: Path, manifest: Path) -> None:
    """The hashdeep format carries size,sha256,name; a newline in a name means left out, bit 8."""
    r = export(manifest, "hashdeep", relative_to=odd_tree)
    assert r.returncode == 8
    assert b"cannot hold names with a newline" in r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == [b"%%%% HASHDEEP-1.0", b"%%%% size,sha256,filename"]
    rows = [line.split(b",", 2) for line in lines if not line.startswith((b"%", b"#"))]
    expected = {b"sub/" + n: b"content of " + n for n in ODD if b"\n" not in n}
    assert {name: (int(size), digest) for size, digest, name in rows} == {
        name: (len(c), hashlib.sha256(c).hexdigest().encode()) for name, c in expected.items()
    }


def test_mtree_lists_every_entry_with_escapes(odd_tree: Path, manifest: Path) -> None:
    """The mtree format lists directories and symlinks too, with octal escapes for odd bytes."""
    r = export(manifest, "mtree", relative_to=odd_tree)
    assert r.returncode == 0
    lines = {line.split(b" ", 1)[0]: line for line in r.stdout.splitlines()[1:]}
    assert b"type=dir" in lines[b"."]
    assert lines[b"link"].startswith(b"link type=link mode=0777")
    assert lines[b"link"].endswith(b" link=sub")
    assert b"type=file" in lines[b"sub/with\\040space.txt"]
    assert lines[b"sub/new\\012line"].endswith(
        b"sha256digest=" + hashlib.sha256(b"content of new\nline").hexdigest().encode()
    )
    assert b"sub/tab\\011and\\040\\043\\075.txt" in lines
    assert b"sub/\\377\\376" in lines


def export(
    manifest: Path, fmt: str, relative_to: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run the real `integrityd export`, keeping its output as bytes."""
    extra = ["--relative-to", str(relative_to)] if relative_to else []
    cmd = [sys.executable, "-m", "integrityd", "export", "-m", str(manifest), "--format", fmt]
    return subprocess.run([*cmd, *extra], capture_output=True, check=False)
