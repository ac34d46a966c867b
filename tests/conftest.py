"""Shared helpers: run the real CLI, read its JSON events, watch real processes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from integrityd.config import RootConfig
from integrityd.manifest import journal_files
from integrityd.messages import Job, Scope
from integrityd.policy import Command

DROP_DAC = (
    (
        "setpriv",
        "--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search",
    )
    if os.geteuid() == 0
    else ()
)
"""Run as root but without the capabilities that let root read any file (as is, for others)."""

SERVICE_UID = 65534  # nobody
AS_SERVICE = (
    "setpriv",
    f"--reuid={SERVICE_UID}",
    f"--regid={SERVICE_UID}",
    "--clear-groups",
    "--inh-caps=+dac_read_search",
    "--ambient-caps=+dac_read_search",
)
"""Run as the shipped units do: an unprivileged user with CAP_DAC_READ_SEARCH alone (root only)."""


def integrityd(
    *args: object, prefix: tuple[str, ...] = (), timeout: float = 120, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a subprocess and capture its output."""
    cmd = [*prefix, sys.executable, "-m", "integrityd", *(os.fsdecode(a) for a in map(str, args))]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def scan_job(command: Command, root: Path, manifest: Path, readers: int | None = None) -> Job:
    """A job for one root, scanned from its top (``readers``: the root's ``workers`` limit)."""
    start = os.fsencode(root)
    return Job(
        command=command,
        manifest=os.fsencode(manifest),
        scopes=(Scope(RootConfig(path=start, workers=readers), start),),
        skip=journal_files(os.fsencode(manifest)),
        json=True,
        progress=False,
    )


def start(*args: object) -> subprocess.Popen[str]:
    """Start the real CLI in the background."""
    cmd = [sys.executable, "-m", "integrityd", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def events(r: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """Every JSON line on stdout."""
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def findings(r: subprocess.CompletedProcess[str]) -> list[tuple[str, str]]:
    """(action, path) of each finding, in report order."""
    return [(e["event"]["action"], e["file"]["path"]) for e in events(r) if "file" in e]


def summary(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The closing summary object."""
    last = events(r)[-1]
    assert last["event"]["action"] == "summary", r.stdout
    return dict(last["summary"])


def log_lines(r: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """Stderr parsed as JSON lines (it is not a terminal in tests)."""
    return [json.loads(line) for line in r.stderr.splitlines() if line.strip()]


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll until ``predicate`` returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    tree = _children()
    out: set[int] = set()
    stack = [pid]
    while stack:
        for child in tree.get(stack.pop(), []):
            out.add(child)
            stack.append(child)
    return out


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def can_mount() -> bool:
    """Whether this process may make a mount namespace of its own (``unshare -m``)."""
    return shutil.which("unshare") is not None and (
        subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode == 0
    )


def in_mount_namespace(script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a shell ``script`` in a private mount namespace: its mounts vanish with it.

    The tests' own integrityd comes first on PYTHONPATH for the Python it starts.
    """
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)),
    )


def holder_of(path: Path, pids: set[int]) -> int | None:
    """The process among ``pids`` that has ``path`` open."""
    target = str(path)
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


def sparse(path: Path, size: int) -> Path:
    """A file that takes real time to hash but no disk space."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.fixture(autouse=True)
def _no_child_leaks() -> Iterator[None]:
    """No test may leave multiprocessing children of the test process behind."""
    before = set(multiprocessing.active_children())
    yield
    assert set(multiprocessing.active_children()) <= before


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small tree with files at two depths."""
    root = tmp_path / "tree"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "b.bin").write_bytes(os.urandom(70_000))
    (root / "sub" / "c.txt").write_text("gamma\n")
    (root / "sub" / "deep" / "d.txt").write_text("delta\n")
    return root


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """Where the test's manifest lives (outside the tree)."""
    return tmp_path / "state" / "manifest.db"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


Event = dict[str, Any]


class Watcher:
    """A running daemon: its events, log lines and sd_notify messages, collected as they come."""

    def __init__(
        self,
        tmp_path: Path,
        *args: object,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
        notify: bool = True,
        read_notes: bool = True,
        new_session: bool = False,
    ) -> None:
        self.notes: list[str] = []
        self.events: list[Event] = []
        self.logs: list[Event] = []
        self.sock: socket.socket | None = None
        full_env = dict(os.environ) | (env or {})
        if notify:
            path = str(tmp_path / f"notify-{time.monotonic_ns()}.sock")
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(path)
            full_env["NOTIFY_SOCKET"] = path
        cmd = [
            *prefix,
            sys.executable,
            "-m",
            "integrityd",
            "watch",
            *(os.fsdecode(str(a)) for a in args),
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            start_new_session=new_session,
        )
        self._threads = [
            threading.Thread(target=self._lines, args=(self.proc.stdout, self.events)),
            threading.Thread(target=self._lines, args=(self.proc.stderr, self.logs)),
        ]
        if self.sock is not None and read_notes:
            self._threads.append(threading.Thread(target=self._notes))
        for t in self._threads:
            t.daemon = True
            t.start()

    @staticmethod
    def _lines(stream: Any, out: list[Event]) -> None:
        for line in stream:
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "not-json", "line": line})

    def _notes(self) -> None:
        assert self.sock is not None
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            self.notes.extend(data.decode().split("\n"))

    def ready(self, timeout: float = 30) -> None:
        """Wait for READY=1; the daemon must still be running."""
        wait_for(lambda: "READY=1" in self.notes or self.proc.poll() is not None, timeout, "READY")
        assert self.proc.poll() is None, self.logs

    def log(self, name: str, timeout: float = 30, count: int = 1) -> Event:
        """Wait for the ``count``-th log line named ``name``; return it."""
        hits = wait_for(
            lambda: (
                (h := [e for e in self.logs if e.get("event") == name]) and len(h) >= count and h
            ),
            timeout,
            f"log event {name!r}",
        )
        return dict(hits[count - 1])

    def scanned(self, count: int = 1) -> None:
        """Wait until the ``count``-th full scan has finished."""
        self.log("scan_finished", count=count)

    def findings(self) -> list[tuple[str, str]]:
        """(action, path) of every finding so far."""
        return [(e["event"]["action"], e["file"]["path"]) for e in list(self.events) if "file" in e]

    def wait(self, action: str, path: Path | str, timeout: float = 20) -> Event:
        """Wait for a finding; return its event."""
        hits = wait_for(
            lambda: [
                e
                for e in list(self.events)
                if e.get("event", {}).get("action") == action and e["file"]["path"] == str(path)
            ],
            timeout,
            f"{action} {path}",
        )
        return dict(hits[0])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0, group: bool = False) -> int:
        """Signal the daemon; it must exit within ``timeout`` and leave no process behind.

        ``group``: signal its whole process group (it must have a ``new_session``).
        """
        children = descendants(self.proc.pid)
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        start = time.monotonic()
        code = self.proc.wait(timeout=timeout + 5)
        took = time.monotonic() - start
        assert took < timeout, f"took {took:.1f} s to stop"
        wait_for(lambda: not any(alive(p) for p in children), 5, "no process left")
        for t in self._threads[:2]:
            t.join(5)
        assert [e for e in self.logs if e.get("event") == "not-json"] == [], "stderr: JSON only"
        return code

    def close(self) -> None:
        """Kill the daemon if a failed test left it running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for t in self._threads[:2]:
            t.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        if self.sock is not None:
            self.sock.close()


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[Callable[..., Watcher]]:
    started: list[Watcher] = []

    def make(*args: object, **kw: Any) -> Watcher:
        w = Watcher(tmp_path, *args, **kw)
        started.append(w)
        return w

    yield make
    for w in started:
        w.close()


REPO = Path(__file__).resolve().parent.parent


def has_commit(commit: str) -> bool:
    """Whether this checkout's history holds ``commit`` (a shallow clone may not)."""
    if shutil.which("git") is None:
        return False
    probe = ["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def integrityd_of(commit: str, tmp_path: Path, *args: object) -> subprocess.CompletedProcess[str]:
    """Run the CLI of an earlier commit (its package from git archive) in ``tmp_path``."""
    old = tmp_path / f"release-{commit}"
    if not old.exists():
        archive = tmp_path / f"release-{commit}.tar"
        subprocess.run(
            ["git", "-C", str(REPO), "archive", "-o", str(archive), commit, "integrityd"],
            check=True,
        )
        with tarfile.open(archive) as tar:
            tar.extractall(old, filter="data")
    return subprocess.run(
        [sys.executable, "-m", "integrityd", *(os.fsdecode(str(a)) for a in args)],
        env=dict(os.environ, PYTHONPATH=str(old)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
