"""A root of ``/``, AIDE's default set-up: the whole system, with excludes.

Each test runs integrityd in a mount namespace of its own whose ``/mnt`` is a fresh
tmpfs, and excludes every other top-level directory, so that ``/`` holds a small tree
that nothing else touches. The files are written through ``/proc/PID/root``.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from integrityd.manifest import SCHEMA_VERSION

from .conftest import Watcher, events, findings, integrityd, sha


def _mount_namespace_works() -> bool:
    return shutil.which("unshare") is not None and (
        subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode == 0
    )


pytestmark = pytest.mark.skipif(
    not _mount_namespace_works(), reason="needs a mount namespace (root)"
)


class Namespace:
    """A mount namespace held open by a sleeping process; commands enter it with nsenter."""

    def __init__(self) -> None:
        script = "mount -t tmpfs integrityd-test /mnt && echo ready && exec sleep 600"
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "ready\n"
        self.prefix = ("nsenter", "-t", str(self.proc.pid), "-m", "--")
        self.mnt = Path(f"/proc/{self.proc.pid}/root/mnt")  # /mnt inside, seen from here

    def close(self) -> None:
        """End the namespace: its tmpfs goes with its last process."""
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def ns() -> Iterator[Namespace]:
    n = Namespace()
    yield n
    n.close()


@pytest.fixture
def cfg(tmp_path: Path, ns: Namespace) -> Path:
    """Root ``/``, everything but ``/mnt`` excluded; the manifest lives in excluded /tmp."""
    (ns.mnt / "sub").mkdir()
    (ns.mnt / "a.txt").write_bytes(b"alpha\n")
    (ns.mnt / "sub" / "b.txt").write_bytes(b"beta\n")
    others = sorted(f"/{name}" for name in os.listdir("/") if name != "mnt")
    path = tmp_path / "root.yaml"
    path.write_text(
        f"manifest: {tmp_path / 'm.db'}\nworkers: 2\nroots:\n  - path: /\n"
        f"    one_filesystem: false\n    exclude: {json.dumps(others)}\n"
    )
    return path


def run(ns: Namespace, *args: object) -> subprocess.CompletedProcess[str]:
    return integrityd(*args, prefix=ns.prefix)


def test_init_check_accept_verify_with_a_root_of_slash(ns: Namespace, cfg: Path) -> None:
    """Nothing is reported removed, ``/`` itself least of all; changes are found and accepted."""
    r = run(ns, "init", "-c", cfg, "--json")
    assert r.returncode == 0, r.stderr
    assert [e["summary"]["files"] for e in events(r) if "summary" in e] == [5]
    r = run(ns, "check", "-c", cfg, "--json")
    assert (r.returncode, findings(r)) == (0, []), r.stdout

    (ns.mnt / "a.txt").write_bytes(b"changed\n")
    (ns.mnt / "new.txt").write_bytes(b"new\n")
    r = run(ns, "check", "-c", cfg, "--json")
    assert (r.returncode, findings(r)) == (
        5,
        [("modified", "/mnt/a.txt"), ("added", "/mnt/new.txt")],
    )

    assert run(ns, "accept", "-c", cfg, "/mnt/new.txt").returncode == 0
    r = run(ns, "check", "-c", cfg, "--json")
    assert (r.returncode, findings(r)) == (4, [("modified", "/mnt/a.txt")])
    assert run(ns, "accept", "-c", cfg, "--all").returncode == 0
    r = run(ns, "verify", "-c", cfg, "--json")
    assert (r.returncode, findings(r)) == (0, []), r.stdout
    assert [e["summary"]["files"] for e in events(r) if "summary" in e] == [3]  # regular files

    (ns.mnt / "sub" / "b.txt").unlink()
    r = run(ns, "check", "-c", cfg, "--json")
    assert (r.returncode, findings(r)) == (2, [("removed", "/mnt/sub/b.txt")])


def test_export_and_import_with_a_root_of_slash(ns: Namespace, cfg: Path, tmp_path: Path) -> None:
    """An export of ``/`` imports back as a baseline of ``/`` that matches the tree."""
    assert run(ns, "init", "-c", cfg).returncode == 0
    r = run(ns, "export", "-c", cfg, "--format", "sha256sum")
    assert r.returncode == 0, r.stderr
    alpha, beta = sha(b"alpha\n"), sha(b"beta\n")
    assert r.stdout == f"{alpha}  /mnt/a.txt\n{beta}  /mnt/sub/b.txt\n"
    sums = tmp_path / "sums.txt"
    sums.write_text(r.stdout)
    other = tmp_path / "imported.db"
    r = run(ns, "import", "-m", other, "--format", "sha256sum", "--root", "/", sums)
    assert r.returncode == 0, r.stderr
    r = run(ns, "check", "-m", other, "--json", "/mnt")
    assert (r.returncode, findings(r)) == (0, []), r.stdout
    with sqlite3.connect(other) as conn:  # "/" has no parent: it is not a child of itself
        assert conn.execute("SELECT parent FROM files WHERE name = x'2f'").fetchall() == [(b"",)]
        assert conn.execute("SELECT count(*) FROM files WHERE name = x''").fetchone() == (0,)
    conn.close()


def test_watch_with_a_root_of_slash(
    ns: Namespace, cfg: Path, watcher: Callable[..., Watcher]
) -> None:
    """The daemon watches the tree below ``/``, not the excluded directories beside it."""
    assert run(ns, "init", "-c", cfg).returncode == 0
    w = watcher("-c", cfg, prefix=ns.prefix)
    w.ready()
    w.scanned()
    (ns.mnt / "sub" / "live.txt").write_bytes(b"live\n")
    assert w.wait("added", "/mnt/sub/live.txt")["file"]["hash"]["sha256"] == sha(b"live\n")
    (ns.mnt / "a.txt").unlink()
    w.wait("removed", "/mnt/a.txt")
    assert w.stop() == 0
    assert sorted(w.findings()) == [("added", "/mnt/sub/live.txt"), ("removed", "/mnt/a.txt")]
    assert not [e for e in w.logs if e.get("level") in ("warning", "error")], w.logs


def test_a_manifest_of_slash_from_schema_1_is_upgraded(
    ns: Namespace, cfg: Path, tmp_path: Path
) -> None:
    """Schema 1 stored ``/`` as a child of itself; the first command upgrades it in place."""
    assert run(ns, "init", "-c", cfg).returncode == 0
    with sqlite3.connect(tmp_path / "m.db") as conn:
        conn.execute("UPDATE files SET parent = x'2f', name = x'' WHERE name = x'2f'")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    r = run(ns, "check", "-c", cfg, "--json")
    assert (r.returncode, findings(r)) == (0, []), r.stdout
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("SELECT parent, name FROM files WHERE type = 'dir' AND parent = x''")\
            .fetchall() == [(b"", b"/")]  # fmt: skip
    conn.close()
