"""init / check / accept end to end: the real CLI, real processes, real trees."""

from __future__ import annotations

import contextlib
import grp
import hashlib
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from integrityd.errors import ExitCode
from integrityd.manifest import ManifestStore
from integrityd.report import unescape_path

from .conftest import DROP_DAC, events, findings, integrityd, log_lines, summary


def init(manifest: Path, *paths: object, **kw: object) -> None:
    r = integrityd("init", "-m", manifest, "--json", *paths, **kw)  # type: ignore[arg-type]
    assert r.returncode == 0, r.stderr


def check(manifest: Path, *args: object, **kw: object) -> subprocess.CompletedProcess[str]:
    return integrityd("check", "-m", manifest, "--json", *args, **kw)  # type: ignore[arg-type]


def test_clean_check_exits_zero(tree: Path, manifest: Path) -> None:
    """A tree checked right after init matches: exit 0, no findings, every entry counted."""
    init(manifest, tree)
    r = check(manifest)
    assert r.returncode == 0, r.stderr
    assert findings(r) == []
    s = summary(r)
    assert (s["files"], s["exit_code"]) == (7, 0)  # 4 files, 3 directories (root included)


def test_log_level_filters_diagnostics(tmp_path: Path, tree: Path, manifest: Path) -> None:
    """Info (the default) keeps a clean check silent on stderr; debug logs each worker start.

    Loggers import structlog on the first message that passes the level, so both sides
    of that filter are checked here.
    """
    init(manifest, tree)
    quiet = check(manifest, "-j", "2")
    assert (quiet.returncode, quiet.stderr) == (0, "")
    config = tmp_path / "debug.yaml"
    config.write_text("log: {format: json, level: debug}\n")
    loud = check(manifest, "-c", config, "-j", "2")
    assert loud.returncode == 0, loud.stderr
    started = [e for e in log_lines(loud) if e["event"] == "worker_started"]
    assert [(e["level"], type(e["pid"])) for e in started] == [("debug", int)] * 2


def test_manifest_digests_match_sha256sum(tree: Path, manifest: Path) -> None:
    """The baseline's digests are exactly what sha256sum and hashlib compute."""
    init(manifest, tree)
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    out = subprocess.run(
        ["sha256sum", *map(str, files)], capture_output=True, text=True, check=True
    )
    expected = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in out.stdout.splitlines()}
    with ManifestStore.open(os.fsencode(manifest), "read") as store:
        for f in files:
            entry = store.lookup(os.fsencode(f))
            assert entry is not None
            assert entry.sha256 is not None
            assert (
                entry.sha256.hex() == expected[str(f)] == hashlib.sha256(f.read_bytes()).hexdigest()
            )


def test_manifest_holds_blobs_byte_for_byte(tree: Path, manifest: Path) -> None:
    """Names, parents, digests and link targets are stored as BLOBs, whichever run wrote them."""
    odd = os.fsencode(tree) + b"/\xff odd"
    os.symlink(b"target \xfe", odd)
    init(manifest, tree)
    (tree / "sub" / "new.txt").write_text("new\n")
    os.symlink(b"elsewhere", os.fsencode(tree) + b"/link")
    assert integrityd("accept", "-m", manifest, "--all").returncode == 0
    with contextlib.closing(sqlite3.connect(manifest)) as db:
        types = db.execute(
            "SELECT DISTINCT type, typeof(parent), typeof(name), typeof(sha256), typeof(target) "
            "FROM files ORDER BY type"
        ).fetchall()
        rows = db.execute(
            "SELECT parent, name, target FROM files WHERE type = 'symlink'"
        ).fetchall()
    assert types == [
        ("dir", "blob", "blob", "null", "null"),
        ("file", "blob", "blob", "blob", "null"),
        ("symlink", "blob", "blob", "null", "blob"),
    ]
    assert sorted(rows) == [
        (os.fsencode(tree), b"link", b"elsewhere"),
        (os.fsencode(tree), b"\xff odd", b"target \xfe"),
    ]


def test_each_kind_and_exit_bit(tree: Path, manifest: Path) -> None:
    """Added, removed, modified, metadata and corrupted each appear once; bits OR to 7."""
    init(manifest, tree)
    (tree / "new.txt").write_text("new\n")
    (tree / "sub" / "c.txt").unlink()
    (tree / "a.txt").write_text("alpha, edited\n")
    os.chmod(tree / "sub" / "deep" / "d.txt", 0o600)
    victim = tree / "b.bin"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[65_536] ^= 0xFF  # flip every bit of one byte: a fixed value could be a no-op
    victim.write_bytes(data)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = check(manifest)
    assert r.returncode == ExitCode.ADDED | ExitCode.REMOVED | ExitCode.CHANGED, r.stderr
    assert sorted(findings(r)) == sorted(
        [
            ("added", f"{tree}/new.txt"),
            ("removed", f"{tree}/sub/c.txt"),
            ("modified", f"{tree}/a.txt"),
            ("metadata", f"{tree}/sub/deep/d.txt"),
            ("corrupted", f"{tree}/b.bin"),
        ]
    )
    by_path = {e["file"]["path"]: e for e in events(r) if "file" in e}
    corrupted = by_path[f"{tree}/b.bin"]
    assert corrupted["changes"] == ["hash.sha256"]
    assert corrupted["file"]["hash"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert corrupted["baseline"]["size"] == corrupted["file"]["size"] == 70_000
    meta = by_path[f"{tree}/sub/deep/d.txt"]
    assert (meta["changes"], meta["baseline"]["mode"], meta["file"]["mode"]) == (
        ["mode"],
        "0644",
        "0600",
    )
    assert (
        by_path[f"{tree}/new.txt"]["file"]["hash"]["sha256"] == hashlib.sha256(b"new\n").hexdigest()
    )
    assert (
        by_path[f"{tree}/sub/c.txt"]["baseline"]["hash"]["sha256"]
        == hashlib.sha256(b"gamma\n").hexdigest()
    )
    s = summary(r)
    assert (s["added"], s["removed"], s["modified"], s["metadata"], s["corrupted"]) == (
        1,
        1,
        1,
        1,
        1,
    )


def test_many_small_directories(tmp_path: Path, manifest: Path) -> None:
    """400 directories of two files, walked several to a task: each change is found once."""
    root = tmp_path / "many"
    for i in range(20):
        for j in range(20):
            d = root / f"d{i:02}" / f"e{j:02}"
            d.mkdir(parents=True)
            (d / "f0").write_bytes(b"%d/%d" % (i, j))
            (d / "f1").write_bytes(b"")
    init(manifest, root)
    (root / "d03" / "e07" / "f0").write_bytes(b"edited")
    (root / "d11" / "e02" / "f1").unlink()
    (root / "d19" / "e19" / "new").write_bytes(b"")
    shutil.rmtree(root / "d07" / "e05")
    r = check(manifest)
    assert r.returncode == ExitCode.ADDED | ExitCode.REMOVED | ExitCode.CHANGED, r.stderr
    assert sorted(findings(r)) == [
        ("added", f"{root}/d19/e19/new"),
        ("modified", f"{root}/d03/e07/f0"),
        ("removed", f"{root}/d07/e05"),
        ("removed", f"{root}/d07/e05/f0"),
        ("removed", f"{root}/d07/e05/f1"),
        ("removed", f"{root}/d11/e02/f1"),
    ]
    assert summary(r)["files"] == 1 + 20 + 400 + 800 - 1 - 3 + 1  # root, dirs, files; changes


def test_single_bits(tree: Path, manifest: Path) -> None:
    """Each kind alone sets only its own bit."""
    init(manifest, tree)
    (tree / "x").write_text("x")
    assert check(manifest).returncode == ExitCode.ADDED
    (tree / "x").unlink()
    (tree / "a.txt").unlink()
    assert check(manifest).returncode == ExitCode.REMOVED
    init(manifest, tree)
    os.chmod(tree / "b.bin", 0o755)
    assert check(manifest).returncode == ExitCode.CHANGED


def test_accept_paths_then_all(tree: Path, manifest: Path) -> None:
    """Accept PATH re-baselines only below PATH; accept --all the rest; then check is clean."""
    init(manifest, tree)
    (tree / "a.txt").write_text("changed\n")
    (tree / "sub" / "c.txt").write_text("changed too\n")
    r = integrityd("accept", "-m", manifest, "--json", tree / "sub")
    assert r.returncode == 0, r.stderr
    assert findings(r) == [("modified", f"{tree}/sub/c.txt")]
    assert findings(check(manifest)) == [("modified", f"{tree}/a.txt")]
    assert integrityd("accept", "-m", manifest, "--all").returncode == 0
    assert check(manifest).returncode == 0


def test_text_report_is_readable(tree: Path, manifest: Path) -> None:
    """Without --json the report lists each difference with old → new, then the counts."""
    init(manifest, tree)
    (tree / "a.txt").write_text("alpha!\n")
    r = integrityd("check", "-m", manifest)
    assert r.returncode == ExitCode.CHANGED
    lines = r.stdout.splitlines()
    assert lines[0] == f"modified   {tree}/a.txt"
    old, new = hashlib.sha256(b"alpha\n").hexdigest(), hashlib.sha256(b"alpha!\n").hexdigest()
    assert f"sha256   {old} → {new}" in lines[1]
    assert "size     6 → 7" in lines[2]
    assert (
        "added 0, removed 0, modified 1, backdated 0, metadata 0, corrupted 0, unreadable 0"
        in r.stdout
    )


def test_special_files_fifo_symlinks(tree: Path, manifest: Path) -> None:
    """FIFOs never hang a run; dangling and looping symlinks are recorded by target."""
    os.mkfifo(tree / "pipe")
    (tree / "dangling").symlink_to("/nowhere")
    (tree / "loop1").symlink_to("loop2")
    (tree / "loop2").symlink_to("loop1")
    init(manifest, tree)
    assert check(manifest, timeout=30).returncode == 0
    (tree / "dangling").unlink()
    (tree / "dangling").symlink_to("/elsewhere")
    os.chmod(tree / "pipe", 0o600)
    r = check(manifest, timeout=30)
    assert r.returncode == ExitCode.CHANGED
    by_path = {e["file"]["path"]: e for e in events(r) if "file" in e}
    assert by_path[f"{tree}/dangling"]["changes"] == ["target_path"]
    assert by_path[f"{tree}/dangling"]["file"]["target_path"] == "/elsewhere"
    assert by_path[f"{tree}/pipe"]["changes"] == ["mode"]
    assert by_path[f"{tree}/pipe"]["file"]["type"] == "fifo"
    (tree / "pipe").unlink()
    (tree / "pipe").write_text("now a file")
    r = check(manifest)
    [pipe] = [e for e in events(r) if "file" in e and e["file"]["path"] == f"{tree}/pipe"]
    assert (pipe["event"]["action"], pipe["changes"][0]) == ("metadata", "type")
    assert (pipe["baseline"]["type"], pipe["file"]["type"]) == ("fifo", "file")


def test_odd_names_are_escaped_reversibly(tree: Path, manifest: Path) -> None:
    """Non-UTF-8 bytes and newlines in names come out escaped, valid JSON, and reversible."""
    init(manifest, tree)
    odd = [b"\xff\xfe latin1 \xe9", b"new\nline", b"back\\slash", b"tab\there"]
    for name in odd:
        with open(os.fsencode(tree) + b"/" + name, "wb") as f:
            f.write(name)
    r = check(manifest)
    assert r.returncode == ExitCode.ADDED
    got = sorted(unescape_path(e["file"]["path"]) for e in events(r) if "file" in e)
    assert got == sorted(os.fsencode(tree) + b"/" + n for n in odd)
    assert all("\n" not in e["file"]["path"] for e in events(r) if "file" in e)
    assert integrityd("accept", "-m", manifest, "--all").returncode == 0
    assert check(manifest).returncode == 0


def test_manifest_name_need_not_be_utf8(tmp_path: Path, tree: Path) -> None:
    """Workers open the manifest by URI: a name that is not UTF-8, with ``%?#``, still works."""
    manifest = Path(os.fsdecode(os.fsencode(tmp_path) + b"/m\xff%3f?#.db"))
    init(manifest, tree)
    (tree / "sub" / "c.txt").write_text("changed\n")
    r = check(manifest)
    assert r.returncode == ExitCode.CHANGED, r.stderr
    assert findings(r) == [("modified", str(tree / "sub" / "c.txt"))]
    assert sorted(os.listdir(os.fsencode(tmp_path))) == [b"m\xff%3f?#.db", b"tree"]


def test_unreadable_file_sets_incomplete(tree: Path, manifest: Path) -> None:
    """A file this user cannot read is an 'unreadable' finding with bit 8, in init and check."""
    secret = tree / "secret"
    secret.write_text("s")
    secret.chmod(0)
    r = integrityd("init", "-m", manifest, "--json", tree, prefix=DROP_DAC)
    assert r.returncode == ExitCode.INCOMPLETE, r.stderr
    assert findings(r) == [("unreadable", str(secret))]
    r = integrityd("check", "-m", manifest, "--json", prefix=DROP_DAC)
    assert r.returncode == ExitCode.INCOMPLETE, r.stderr
    [e] = [e for e in events(r) if "file" in e]
    assert (e["event"]["action"], e["error"]["type"]) == ("unreadable", "permission")
    assert "Permission denied" in e["error"]["message"]


def test_unreadable_directory_is_not_reported_as_removed(tree: Path, manifest: Path) -> None:
    """Files below a directory that cannot be listed are unverified, never 'removed'."""
    init(manifest, tree)
    (tree / "sub").chmod(0)
    try:
        r = integrityd("check", "-m", manifest, "--json", prefix=DROP_DAC)
    finally:
        (tree / "sub").chmod(0o755)
    # chmod 0 is itself a mode change, reported beside the unreadable directory.
    assert r.returncode == ExitCode.INCOMPLETE | ExitCode.CHANGED, r.stderr
    assert sorted(findings(r)) == [("metadata", f"{tree}/sub"), ("unreadable", f"{tree}/sub")]
    assert summary(r)["unverified"] == 3  # sub/c.txt, sub/deep, sub/deep/d.txt


def test_file_changing_while_read(tmp_path: Path, manifest: Path) -> None:
    """A file that keeps changing during the read is reported, not given a bogus digest.

    Deterministic: at --max-rate 32M each of the careful reads of the 32 MiB file takes
    about a second, and a writer that appends all the while cannot be kept off a CPU for
    that long (unthrottled, a read took 40 ms, and one without a write in it gave
    ``modified``, exit 4). ``verify`` reads through the same hasher as ``check``.
    """
    root = tmp_path / "tree"
    root.mkdir()
    log = root / "busy.log"
    log.write_bytes(os.urandom(32 << 20))
    init(manifest, root)
    stop = threading.Event()
    wrote = threading.Event()

    def append() -> None:
        with open(log, "ab", buffering=0) as f:
            while not stop.is_set():
                f.write(b"x")
                wrote.set()

    writer = threading.Thread(target=append)
    writer.start()
    try:
        assert wrote.wait(10)
        r = integrityd("verify", "--json", "-m", manifest, "-j", "1", "--max-rate", "32M")
    finally:
        stop.set()
        writer.join()
    assert r.returncode == ExitCode.INCOMPLETE, r.stdout
    [e] = [e for e in events(r) if "file" in e]
    assert (e["event"]["action"], e["error"]["type"]) == ("unreadable", "changing")


def test_excludes_and_manifest_inside_root(tmp_path: Path) -> None:
    """Excluded paths and the manifest's own files are never reported."""
    root = tmp_path / "tree"
    (root / "cache").mkdir(parents=True)
    (root / "keep.txt").write_text("k")
    (root / "x.swp").write_text("s")
    cfg = tmp_path / "c.yaml"
    manifest = root / "state" / "m.db"
    cfg.write_text(
        f"manifest: {manifest}\nroots:\n  - path: {root}\n    exclude: ['*.swp', /cache/]\n"
    )
    r = integrityd("init", "-c", cfg)
    assert r.returncode == 0, r.stderr
    (root / "cache" / "junk").write_text("j")
    (root / "y.swp").write_text("s")
    (root / "keep.txt").write_text("changed")
    for args in (("-c", cfg), ("-m", manifest)):  # without the config, the stored excludes apply
        r = integrityd("check", "--json", *args)
        assert findings(r) == [("modified", f"{root}/keep.txt")], r.stdout


def test_fatal_errors_have_codes_and_one_line(tmp_path: Path, tree: Path, manifest: Path) -> None:
    """Missing manifest 18, unknown path 18, missing root 21, usage 16: one line, no traceback."""
    cases = [
        (("check", "-m", manifest), 18, "does not exist"),
        (("accept", "-m", manifest), 16, "either --all or the PATHs"),
        (("init", "-m", manifest), 16, "init needs PATHs"),
        (("init", "-m", manifest, tmp_path / "nope"), 21, "does not exist"),
        (("frobnicate",), 16, "invalid choice"),
        (("check", "-m", manifest, "-j", "0"), 16, "expected a number >= 1"),
    ]
    for args, code, text in cases:
        r = integrityd(*args)
        assert r.returncode == code, (args, r.stderr)
        [line] = log_lines(r)
        assert text in line["message"]
        assert "Traceback" not in r.stderr
    init(manifest, tree)
    r = check(manifest, tmp_path)
    assert r.returncode == 18
    assert "has no baseline" in r.stderr
    shutil.rmtree(tree)
    r = check(manifest)
    assert r.returncode == 21
    assert "is the filesystem mounted?" in r.stderr


def test_manifest_parent_directories_are_created(tmp_path: Path, tree: Path) -> None:
    """-m with missing parent directories creates them on init."""
    m = tmp_path / "a" / "b" / "c" / "m.db"
    init(m, tree)
    assert m.is_file()


def test_a_bad_exclude_pattern_stops_before_anything_runs(tmp_path: Path) -> None:
    """`[z-a]` once passed `config check`, then killed workers and committed an empty baseline."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.txt").write_text("a")
    manifest = tmp_path / "m.db"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"manifest: {manifest}\nroots:\n  - path: {root}\n    exclude: ['[z-a]']\n")
    for args in (("config", "check", cfg), ("init", "-c", cfg)):
        r = integrityd(*args)
        assert r.returncode == 17, r.stderr
        [line] = r.stderr.splitlines()
        message = json.loads(line)["message"]
        assert message.startswith(f"{cfg}:4: roots[0].exclude[0]: invalid pattern"), message
    assert not manifest.exists()


def test_negated_excludes_keep_what_they_name(tmp_path: Path) -> None:
    """`*.log` then `!keep.log`: keep.log is baselined and checked, the other logs are not."""
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    for name in ("a.log", "sub/keep.log", "sub/b.txt"):
        (root / name).write_text("v1")
    manifest = tmp_path / "m.db"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"manifest: {manifest}\nroots:\n  - path: {root}\n    exclude: ['*.log', '!keep.log']\n"
    )
    assert integrityd("init", "-c", cfg).returncode == 0
    for name in ("a.log", "sub/keep.log", "sub/b.txt"):
        (root / name).write_text("v2")
    r = integrityd("check", "--json", "-c", cfg)
    assert findings(r) == [("modified", f"{root}/sub/b.txt"), ("modified", f"{root}/sub/keep.log")]


def test_a_pattern_stored_by_an_older_release_is_a_clear_error(tmp_path: Path) -> None:
    """A manifest whose root holds a pattern today's rules refuse: one line, exit 18."""
    root = tmp_path / "tree"
    root.mkdir()
    manifest = tmp_path / "m.db"
    assert integrityd("init", "-m", manifest, root).returncode == 0
    with sqlite3.connect(manifest) as conn:
        conn.execute(
            """UPDATE roots SET options = json_set(options, '$.exclude', json('["[z-a]"]'))"""
        )
    conn.close()
    r = integrityd("check", "-m", manifest)
    assert r.returncode == 18, r.stderr
    [line] = r.stderr.splitlines()
    assert json.loads(line)["message"] == (
        f"manifest {manifest}: root {root}: exclude[0] '[z-a]': invalid pattern: bad character "
        "range z-a at position 10; give the root with corrected options in a config (-c)"
    )


@pytest.mark.skipif(not DROP_DAC, reason="needs root, to drop CAP_DAC_OVERRIDE")
def test_what_lstat_shows_of_an_unreadable_file_is_compared(tmp_path: Path) -> None:
    """A mode change of a file this user may not read is `metadata`, not only `unreadable`.

    Baselined by root; checked without CAP_DAC_OVERRIDE (as a user would), the file
    belonging to nobody: its content cannot be read, its lstat() can.
    """
    root = tmp_path / "tree"
    root.mkdir()
    secret = root / "shadow"
    secret.write_bytes(b"root:x:1:\n")
    secret.chmod(0o600)
    os.chown(secret, 65534, 65534)
    manifest = tmp_path / "m.db"
    init(manifest, root)

    r = check(manifest, prefix=DROP_DAC)  # nothing changed: only the content is unknown
    assert r.returncode == ExitCode.INCOMPLETE, r.stdout
    [e] = [e for e in events(r) if "file" in e]
    assert (e["event"]["action"], e["error"]) == (
        "unreadable",
        {"type": "permission", "message": "Permission denied"},
    )

    secret.chmod(0o640)
    r = check(manifest, prefix=DROP_DAC)
    assert r.returncode == ExitCode.CHANGED | ExitCode.INCOMPLETE, r.stdout
    [e] = [e for e in events(r) if "file" in e]
    assert (e["event"]["action"], e["changes"], e["file"]["mode"]) == ("metadata", ["mode"], "0640")
    assert (e["error"]["type"], e["event"]["outcome"]) == ("permission", "failure")
    assert "hash" not in e["file"]
    assert summary(r)["unverified"] == 1

    with open(secret, "ab") as f:
        f.write(b"intruder:x:0:\n")
    r = check(manifest, prefix=DROP_DAC)
    assert r.returncode == ExitCode.CHANGED | ExitCode.INCOMPLETE, r.stdout
    [e] = [e for e in events(r) if "file" in e]
    assert (e["event"]["action"], e["changes"], e["file"]["size"]) == (
        "modified",
        ["size", "mode"],
        len(b"root:x:1:\nintruder:x:0:\n"),
    )


def test_events_carry_the_ecs_fields_siem_rules_key_on(tmp_path: Path) -> None:
    """ecs.version, host.name/id, file.owner/group/directory/extension, event.outcome, duration.

    The fields Auditbeat's file_integrity module sends, which SIEM rules are written for.
    """
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("a = 1\n")
    (root / "etc" / "old.tar.gz").write_text("x")
    os.chown(root / "etc" / "app.conf", 65534, 0)
    manifest = tmp_path / "m.db"
    init(manifest, root)
    (root / "etc" / "app.conf").write_text("a = 2\n")
    (root / "etc" / "old.tar.gz").unlink()
    r = check(manifest)
    by_action = {e["event"]["action"]: e for e in events(r)}
    modified, removed, end = by_action["modified"], by_action["removed"], by_action["summary"]
    for e in (modified, removed, end):
        assert e["ecs"] == {"version": "8.11.0"}
        assert e["host"]["name"] == os.uname().nodename
        if os.path.exists("/etc/machine-id"):
            with open("/etc/machine-id") as f:
                assert e["host"]["id"] == f.read().strip()
    assert {k: modified["file"][k] for k in ("directory", "extension", "owner", "group")} == {
        "directory": f"{root}/etc",
        "extension": "conf",
        "owner": pwd.getpwuid(65534).pw_name,
        "group": grp.getgrgid(0).gr_name,
    }
    assert modified["baseline"]["owner"] == pwd.getpwuid(65534).pw_name
    assert modified["event"]["outcome"] == "success"
    assert {k: removed["file"][k] for k in ("path", "name", "directory", "extension")} == {
        "path": f"{root}/etc/old.tar.gz",
        "name": "old.tar.gz",
        "directory": f"{root}/etc",
        "extension": "gz",
    }
    assert end["event"]["outcome"] == "success"
    duration = end["event"]["duration"]  # nanoseconds, an integer, as ECS defines it
    assert isinstance(duration, int)
    assert abs(duration / 1e9 - end["summary"]["seconds"]) <= 0.0005


def test_a_nightly_report_can_stay_short(tree: Path, manifest: Path) -> None:
    """--max-findings N shows the first N (by path) and how many more; --summary-only none.

    Either way the summary and the exit code count every finding (AIDE's report_level).
    """
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    for name in ("a.txt", "sub/c.txt", "sub/deep/d.txt"):
        (tree / name).write_text("changed\n")
    r = integrityd("check", "-m", manifest, "--max-findings", "1", tree)
    assert r.returncode == 4
    assert r.stdout.count("modified   /") == 1
    assert f"modified   {tree / 'a.txt'}" in r.stdout
    assert "... and 2 more findings (the summary counts them all)" in r.stdout
    assert "modified 3" in r.stdout
    r = integrityd("check", "-m", manifest, "--summary-only", tree)
    assert r.returncode == 4
    assert "modified   /" not in r.stdout
    assert "modified 3" in r.stdout
    r = integrityd("check", "-m", manifest, "--max-findings", "2", "--json", tree)
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [e["event"]["action"] for e in lines] == ["modified", "modified", "summary"]
    assert lines[-1]["summary"]["modified"] == 3
