#!/usr/bin/env python3
"""The systemd units under a real, booted systemd: the operator's scenarios, asserted.

Boots systemd as PID 1 of a throw-away container and drives the units as an operator
does: install the project into /opt/integrityd, the system user from sysusers, a
baseline with integrityd-init@, the daemon (notify), changes that must reach the journal
as one JSON event each, reload with a valid and an invalid config, the watchdog (pings
advance; a stopped collector trips it and the service restarts), a killed worker
replaced, a clean stop, verify@ with findings failing and writing its summary, and the
timer. Each scenario asserts on `systemctl show` properties and on the journal.

The recipe, for a machine whose PID 1 is not systemd, without D-Bus, with hybrid
cgroups: an overlay whose lower layer is / and whose upper and work directories are on
a tmpfs (an upper inside / is refused), a fresh /etc/machine-id in it (nspawn refuses
the host's), the project installed into it by a plain `systemd-nspawn -D ROOT` run,
then `systemd-nspawn -b --register=no --keep-unit --private-network` with the unified
cgroup hierarchy (stopping takes 15 s otherwise). Commands run in the container through
`nsenter -t PID -a`. Everything is torn down on every way out.

It never skips: a machine that cannot boot the container fails this script, loudly.
Run as root: python3 .ci/booted_systemd.py
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIG = """\
roots:
  - path: /srv/watched
watch:
  settle: 0.2s
"""
BAD_CONFIG = "roots:\n  - path: /srv/watched\n    nonsense: 1\n"


class Failed(Exception):
    """A scenario's assertion did not hold."""


def log(msg: str) -> None:
    """One line of progress."""
    print(f"[booted-systemd] {msg}", flush=True)


def run(cmd: list[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:  # noqa: ANN401
    """Run a host command; with ``check``, a failure is a Failed with its output."""
    r = subprocess.run(cmd, text=True, capture_output=True, check=False, **kw)
    if check and r.returncode != 0:
        raise Failed(f"{shlex.join(cmd)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 30) -> Any:  # noqa: ANN401
    """Poll ``predicate`` until it returns something true, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")


class Container:
    """A booted container; ``sh`` runs a command in it."""

    def __init__(self, root: Path, pid: int) -> None:
        self.root = root
        self.pid = pid

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a shell script in the container, in all its namespaces."""
        return run(["nsenter", "-t", str(self.pid), "-a", "/bin/sh", "-c", script], check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show`` properties of a unit."""
        out = self.sh(f"systemctl show {unit} -p {','.join(props)}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, since_cursor: str | None = None) -> list[str]:
        """The unit's journal lines (messages only), after a cursor."""
        after = f"--after-cursor={shlex.quote(since_cursor)}" if since_cursor else ""
        return self.sh(f"journalctl -u {unit} -o cat --no-pager {after}").stdout.splitlines()

    def cursor(self) -> str:
        """The journal's cursor now: where "after this" begins."""
        out = self.sh("journalctl -n 0 --show-cursor --no-pager").stdout
        return out.strip().rsplit("cursor: ", 1)[-1]

    def events(self, unit: str, cursor: str) -> list[dict[str, Any]]:
        """The findings (JSON events with a file) in the unit's journal after a cursor."""
        found = []
        for line in self.journal(unit, cursor):
            with contextlib.suppress(ValueError):
                e = json.loads(line)
                if isinstance(e, dict) and "file" in e:
                    found.append(e)
        return found


@contextlib.contextmanager
def overlay() -> Iterator[Path]:
    """/ as the lower layer, a tmpfs for the changes; unmounted on every way out."""
    base = Path(tempfile.mkdtemp(prefix="integrityd-boot-"))
    mounted: list[Path] = []
    try:
        run(["mount", "-t", "tmpfs", "-o", "size=4g", "tmpfs", str(base)])
        mounted.append(base)
        for d in ("upper", "work", "root"):
            (base / d).mkdir()
        root = base / "root"
        opts = f"lowerdir=/,upperdir={base}/upper,workdir={base}/work"
        run(["mount", "-t", "overlay", "overlay", "-o", opts, str(root)])
        mounted.append(root)
        yield root
    finally:
        for m in reversed(mounted):
            run(["umount", "-l", str(m)], check=False)
        with contextlib.suppress(OSError):
            base.rmdir()


def prepare(root: Path) -> None:
    """Machine ID, the project in /opt/integrityd, units, user, config and a tree."""
    (root / "etc" / "machine-id").write_text(uuid.uuid4().hex + "\n")
    src = root / "usr" / "src" / "integrityd"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(".venv", ".git", "corpus", "__pycache__", "*.egg-info"),
    )
    shutil.rmtree(root / "opt" / "integrityd", ignore_errors=True)
    log("installing the project into the container's /opt/integrityd")
    run(
        [
            "systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit",
            "/bin/sh", "-c",
            "python3 -m venv /opt/integrityd && "
            "/opt/integrityd/bin/pip install -q --disable-pip-version-check /usr/src/integrityd",
        ],
        timeout=600,
    )  # fmt: skip
    system = root / "etc" / "systemd" / "system"
    for unit in (REPO / "systemd").glob("integrityd*"):
        if unit.is_file() and unit.suffix != ".sysusers":
            shutil.copy(unit, system / unit.name)
    sysusers = root / "etc" / "sysusers.d"
    sysusers.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "systemd" / "integrityd.sysusers", sysusers / "integrityd.conf")
    conf = root / "etc" / "integrityd"
    conf.mkdir(exist_ok=True)
    (conf / "integrityd.yaml").write_text(CONFIG)
    watched = root / "srv" / "watched"
    shutil.rmtree(watched, ignore_errors=True)
    (watched / "sub").mkdir(parents=True)
    (watched / "a.txt").write_text("alpha\n")
    (watched / "sub" / "b.txt").write_text("beta\n")
    # What the host's PID 1 would not start, the container need not either.
    for masked in ("systemd-networkd.service", "systemd-resolved.service"):
        with contextlib.suppress(FileExistsError):
            (system / masked).symlink_to("/dev/null")


@contextlib.contextmanager
def booted(root: Path) -> Iterator[Container]:
    """The container, booted; powered off (or killed) on every way out."""
    env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
    booted_pid: int | None = None
    console = open(root.parent / "console.log", "w")  # noqa: SIM115 - closed below
    nspawn = subprocess.Popen(
        [
            "systemd-nspawn", "-D", str(root), "-b", "--register=no", "--keep-unit",
            "--private-network", "--console=passive",
        ],
        env=env, stdout=console, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:

        def pid1() -> int | None:
            r = run(["pgrep", "-P", str(nspawn.pid), "-x", "systemd"], check=False)
            if nspawn.poll() is not None:
                raise Failed(f"systemd-nspawn exited {nspawn.returncode}: see console.log")
            return int(r.stdout.split()[0]) if r.returncode == 0 else None

        pid = booted_pid = wait_for("the container's systemd", pid1, 60)
        c = Container(root, pid)

        def settled() -> str | None:
            r = c.sh("systemctl is-system-running --wait", check=False)
            state = r.stdout.strip()
            if not state:
                log(f"not yet: {r.stderr.strip()}")
            return state or None

        state = wait_for("the container's system to settle", settled, 90)
        log(f"booted: PID 1 is {pid} on the host, system {state}")
        if state not in ("running", "degraded"):
            raise Failed(f"the container's system is {state}")
        try:
            yield c
        except Failed:
            for unit in ("integrityd", "integrityd-verify@integrityd"):
                out = c.sh(f"journalctl -u {unit} -n 40 --no-pager -o cat", check=False)
                print(f"--- journal of {unit}:\n{out.stdout}{out.stderr}", file=sys.stderr)
            raise
    finally:
        if booted_pid is not None:
            run(["nsenter", "-t", str(booted_pid), "-a", "systemctl", "poweroff"], check=False)
        try:
            nspawn.wait(timeout=30)
        except subprocess.TimeoutExpired:
            nspawn.send_signal(signal.SIGKILL)
            nspawn.wait()
        console.close()


def the_user_and_the_baseline(c: Container) -> None:
    """The user (from sysusers.d, at boot); init@ makes the baseline, 0600, its own."""
    c.sh("getent passwd integrityd")
    c.sh("systemctl start integrityd-init@integrityd")
    p = c.show("integrityd-init@integrityd", "Result", "ExecMainStatus")
    if p != {"Result": "success", "ExecMainStatus": "0"}:
        raise Failed(f"integrityd-init@integrityd: {p}")
    mode = c.sh("stat -c '%a %U' /var/lib/integrityd/manifest.db").stdout.split()
    if mode != ["600", "integrityd"]:
        raise Failed(f"manifest mode and owner: {mode}")
    log("ok: the user exists; init@ made the baseline, 0600, owned by integrityd")
    r = c.sh("systemctl start integrityd-init@typo", check=False)
    typo = c.sh("journalctl -u integrityd-init@typo -o cat --no-pager").stdout
    if r.returncode == 0 or "Assertion failed" not in typo:
        raise Failed(f"integrityd-init@typo: exit {r.returncode}, no failed assertion")
    log("ok: integrityd-init@typo fails: Assertion failed on /etc/integrityd/typo.yaml")


def the_daemon_starts(c: Container) -> int:
    """Type=notify reaches active; the catch-up scan ends; the watch limit was read."""
    cursor = c.cursor()
    c.sh("systemctl start integrityd")
    p = c.show("integrityd", "Type", "ActiveState", "SubState", "MainPID")
    if (p["Type"], p["ActiveState"], p["SubState"]) != ("notify", "active", "running"):
        raise Failed(f"integrityd.service: {p}")
    wait_for(
        "the catch-up scan",
        lambda: any("scan_finished" in x for x in c.journal("integrityd", cursor)),
    )
    watching = next(json.loads(x) for x in c.journal("integrityd", cursor) if '"watching"' in x)
    if not isinstance(watching.get("max_user_watches"), int):
        raise Failed(f"the daemon could not read the inotify watch limit: {watching}")
    log("ok: integrityd.service is active (notify), scanned, and read max_user_watches")
    return int(p["MainPID"])


def changes_reach_the_journal(c: Container) -> None:
    """A write, a chmod and a new file: one JSON event each, and no more."""
    cursor = c.cursor()
    c.sh(
        "echo changed > /srv/watched/a.txt; chmod 600 /srv/watched/sub/b.txt; "
        "echo new > /srv/watched/sub/new.txt"
    )
    want = {
        ("modified", "/srv/watched/a.txt"),
        ("metadata", "/srv/watched/sub/b.txt"),
        ("added", "/srv/watched/sub/new.txt"),
    }

    def seen() -> list[tuple[str, str]] | None:
        got = [(e["event"]["action"], e["file"]["path"]) for e in c.events("integrityd", cursor)]
        return got if want <= set(got) else None

    got = wait_for("three events in the journal", seen)
    time.sleep(1.5)  # a duplicate would come within the settle time: look once more
    got = seen() or got
    if sorted(got) != sorted(want):
        raise Failed(f"events: {got}")
    log("ok: a write, a chmod and a new file: one JSON event each in the journal")


def reloads(c: Container, main: int) -> None:
    """A valid config reloads; an invalid one fails the reload and changes nothing."""
    cursor = c.cursor()
    r = c.sh("systemctl reload integrityd", check=False)
    if r.returncode != 0:
        raise Failed(f"reload with a valid config: exit {r.returncode} {r.stderr}")
    # Done when systemctl returns (ExecReload waits for the daemon): no waiting here.
    if not any('"reloaded"' in x for x in c.journal("integrityd", cursor)):
        raise Failed("systemctl reload returned before the daemon had reloaded")
    log("ok: reload with a valid config, done when systemctl reload returns")
    c.sh(
        "cp /etc/integrityd/integrityd.yaml /root/good.yaml && "
        f"printf %s {shlex.quote(BAD_CONFIG)} > /etc/integrityd/integrityd.yaml"
    )
    r = c.sh("systemctl reload integrityd", check=False)
    c.sh("cp /root/good.yaml /etc/integrityd/integrityd.yaml")
    p = c.show("integrityd", "ActiveState", "MainPID")
    if r.returncode == 0:
        raise Failed("systemctl reload with an invalid config returned 0")
    if p != {"ActiveState": "active", "MainPID": str(main)}:
        raise Failed(f"after a failed reload: {p}")
    log("ok: reload with an invalid config fails, and the daemon runs on")


def watchdog_pings_and_a_killed_worker(c: Container, main: int) -> None:
    """WatchdogTimestamp advances; a SIGKILLed worker is replaced, with a warning."""
    prop = "WatchdogTimestampMonotonic"
    first = c.show("integrityd", prop)[prop]
    wait_for("WatchdogTimestamp to advance", lambda: c.show("integrityd", prop)[prop] != first, 45)
    log("ok: WatchdogTimestamp advances")
    workers = c.sh("pgrep -x integrityd-hash").stdout.split()
    if len(workers) != 2:
        raise Failed(f"expected two processes named integrityd-hash, found {workers}")
    c.sh(f"kill -KILL {workers[0]}")

    def replaced() -> bool:
        now = c.sh("pgrep -x integrityd-hash", check=False).stdout.split()
        return len(now) == 2 and workers[0] not in now

    wait_for("a replacement worker", replaced)
    # Its warning has the journal priority of a warning (<4>), not 6.
    warnings = c.sh("journalctl -u integrityd -p warning -o cat --no-pager").stdout
    if "worker_died" not in warnings:
        raise Failed(f"worker_died is not in journalctl -p warning: {warnings!r}")
    if c.show("integrityd", "MainPID")["MainPID"] != str(main):
        raise Failed("the daemon restarted after a worker was killed")
    log("ok: a SIGKILLed worker is replaced (a warning in the journal), the daemon runs on")


def a_clean_stop(c: Container) -> None:
    """Result=success, and nothing left for systemd to kill."""
    cursor = c.cursor()
    c.sh("systemctl stop integrityd")
    p = c.show("integrityd", "Result", "ActiveState")
    if p != {"Result": "success", "ActiveState": "inactive"}:
        raise Failed(f"stop: {p}")
    killed = [x for x in c.journal("integrityd", cursor) if "Killing process" in x]
    if killed:
        raise Failed(f"systemd killed processes at stop: {killed}")
    log("ok: stop is clean (Result=success, nothing killed)")


def verify_and_its_timer(c: Container) -> None:
    """verify@ with a finding fails and writes its summary; the timer enables."""
    c.sh("echo again > /srv/watched/a.txt")
    c.sh("systemctl start integrityd-verify@integrityd", check=False)
    p = c.show("integrityd-verify@integrityd", "Result", "ExecMainStatus")
    summary = json.loads(c.sh("cat /var/lib/integrityd/verify-integrityd.json").stdout)
    if p["Result"] != "exit-code" or int(p["ExecMainStatus"]) & 4 == 0:
        raise Failed(f"verify@ with a finding: {p}")
    if summary["summary"]["modified"] < 1:
        raise Failed(f"verify@ summary: {summary}")
    log(f"ok: verify@ with findings failed ({p}) and wrote its summary")
    c.sh("systemctl enable --now integrityd-verify@integrityd.timer")
    p = c.show("integrityd-verify@integrityd.timer", "ActiveState", "UnitFileState")
    if p != {"ActiveState": "active", "UnitFileState": "enabled"}:
        raise Failed(f"timer: {p}")
    log("ok: the verify timer is enabled and active")


def the_watchdog_fires(c: Container) -> None:
    """A stopped collector stops the pings: systemd's watchdog restarts the service.

    The daemon pings while the collector answered within two watchdog periods (a busy
    collector is not a stuck one), and systemd waits one more: with WatchdogSec=60 a
    restart comes within about 60 + 2 x 30 s.
    """
    c.sh("systemctl start integrityd")
    main = int(c.show("integrityd", "MainPID")["MainPID"])
    collector = c.sh("pgrep -x integrityd-coll").stdout.split()[0]
    log(f"stopping the collector ({collector}); the watchdog fires within about 2 min")
    c.sh(f"kill -STOP {collector}")
    wait_for(
        "a restart by the watchdog",
        lambda: c.show("integrityd", "MainPID")["MainPID"] not in ("0", str(main)),
        200,
    )
    if "Watchdog timeout" not in c.sh("journalctl -u integrityd -o cat --no-pager").stdout:
        raise Failed("the service restarted, but not for its watchdog")
    wait_for(
        "the restarted daemon",
        lambda: c.show("integrityd", "ActiveState")["ActiveState"] == "active",
        60,
    )
    p = c.show("integrityd", "NRestarts", "ActiveState")
    log(f"ok: the watchdog fired and the service restarted ({p})")


def metrics_behind_the_drop_in(c: Container) -> None:
    """The metrics drop-in opens the loopback, and only it: /metrics answers there."""
    dropin = c.root / "etc" / "systemd" / "system" / "integrityd.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "systemd" / "integrityd.service.d" / "metrics.conf", dropin)
    c.sh("printf 'metrics:\n  listen: 127.0.0.1:9810\n' >> /etc/integrityd/integrityd.yaml")
    c.sh("systemctl daemon-reload && systemctl restart integrityd")
    scrape = (
        "/opt/integrityd/bin/python -c 'import urllib.request as u; "
        'print(u.urlopen("http://127.0.0.1:9810/metrics", timeout=5).read().decode())\''
    )
    text = wait_for(
        "/metrics",
        lambda: (r := c.sh(scrape, check=False)).returncode == 0 and r.stdout,
    )
    if "integrityd_watch_roots 1.0" not in text:
        raise Failed(f"/metrics: {text[:500]}")
    log("ok: with the metrics drop-in, /metrics answers on the loopback")


def the_process_server_killed(c: Container) -> None:
    """SIGKILL of the process server: the daemon exits 19 and systemd restarts it."""
    main = c.show("integrityd", "MainPID")["MainPID"]
    server = c.sh(f"pgrep -P {main} -f 'forkserver import main'").stdout.split()[0]
    c.sh(f"kill -KILL {server}")
    wait_for(
        "a restart after the process server died",
        lambda: (
            c.show("integrityd", "MainPID")["MainPID"] not in ("0", main)
            and c.show("integrityd", "ActiveState")["ActiveState"] == "active"
        ),
        60,
    )
    journal = c.sh("journalctl -u integrityd -o cat --no-pager").stdout
    if "process server that forks the hash workers died" not in journal:
        raise Failed("the restart was not for the process server")
    log("ok: a SIGKILLed process server: exit 19, restarted by systemd")
    c.sh("systemctl stop integrityd")
    p = c.show("integrityd", "Result")
    if p != {"Result": "success"}:
        raise Failed(f"stop after the restart: {p}")


def scenarios(c: Container) -> None:
    """Every scenario, in the order an operator meets them."""
    the_user_and_the_baseline(c)
    main = the_daemon_starts(c)
    changes_reach_the_journal(c)
    reloads(c, main)
    watchdog_pings_and_a_killed_worker(c, main)
    a_clean_stop(c)
    verify_and_its_timer(c)
    the_watchdog_fires(c)
    metrics_behind_the_drop_in(c)
    the_process_server_killed(c)


def main() -> int:
    """Boot, run the scenarios, tear down; 0 only if every scenario passed."""
    if os.geteuid() != 0:
        print("booted_systemd.py: must run as root (mounts, nspawn)", file=sys.stderr)
        return 1
    for tool in ("systemd-nspawn", "nsenter", "pgrep"):
        if shutil.which(tool) is None:
            print(f"booted_systemd.py: {tool} is missing", file=sys.stderr)
            return 1
    started = time.monotonic()
    try:
        with overlay() as root:
            prepare(root)
            with booted(root) as c:
                scenarios(c)
    except Failed as e:
        print(f"[booted-systemd] FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    log(f"all scenarios passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
