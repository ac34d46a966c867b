"""Signed baselines (seal.py, keys.py): real keys, real manifests, tampering with sqlite3.

Each way an intruder with write access to the manifest could make a changed file look
clean is tried here, and each must end in exit 22 with nothing compared and nothing
written, when a reader has the public key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from integrityd import seal
from tests.conftest import Watcher, events, findings, integrityd, log_lines

SIGNATURE = 22


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """(private, public): an unencrypted pair made by the real CLI."""
    private, public = tmp_path / "keys" / "sign.pem", tmp_path / "keys" / "sign.pub"
    private.parent.mkdir()
    r = integrityd("key", "new", "--private", private, "--public", public, "--no-passphrase")
    assert r.returncode == 0, r.stderr
    return private, public


@pytest.fixture
def signed(tree: Path, manifest: Path, keys: tuple[Path, Path]) -> Path:
    """The tree, baselined and signed."""
    r = integrityd("init", "-m", manifest, "--sign-key", keys[0], "--json", tree)
    assert r.returncode == 0, r.stderr
    assert events(r)[-1]["signature"]["state"] == "valid"
    return manifest


def test_a_public_key_others_may_write_is_refused(signed: Path, keys: tuple[Path, Path]) -> None:
    """Whoever may replace it could put in his key, and his baseline would check valid."""
    public = keys[1]
    public.chmod(0o646)
    r = integrityd("check", "-m", signed, "--verify-key", public)
    assert r.returncode == SIGNATURE, r.stderr
    assert f"the public key {public} may be written by others than its owner" in r.stderr
    public.chmod(0o644)
    assert integrityd("check", "-m", signed, "--verify-key", public).returncode == 0


def _sql(manifest: Path, *statements: str, params: tuple[object, ...] = ()) -> None:
    """What an intruder with the sqlite3 shell does: edit the manifest in place."""
    conn = sqlite3.connect(manifest)
    for statement in statements:
        conn.execute(statement, params if "?" in statement else ())
    conn.commit()
    conn.close()


def _fingerprint(manifest: Path) -> bytes:
    """Every row of every table: to show that a refused command wrote nothing."""
    conn = sqlite3.connect(manifest)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    out = repr([conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables])  # noqa: S608
    conn.close()
    return out.encode()


def _refused(r: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 22, no findings and no summary on stdout, one error line naming the problem."""
    assert r.returncode == SIGNATURE, (r.stdout, r.stderr)
    assert r.stdout == "", r.stdout
    errors = [e for e in log_lines(r) if e.get("level") == "error"]
    assert len(errors) == 1, errors
    for word in words:
        assert word in errors[0]["message"], errors[0]["message"]


def _check(manifest: Path, public: Path, *paths: Path) -> subprocess.CompletedProcess[str]:
    return integrityd("check", "-m", manifest, "--verify-key", public, "--json", *paths)


def test_a_signed_baseline_checks_valid_and_names_key_seq_and_digest(
    tree: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    r = _check(signed, keys[1], tree)
    assert r.returncode == 0, r.stderr
    sig = events(r)[-1]["signature"]
    assert sig["state"] == "valid"
    assert sig["seq"] == 1
    assert len(sig["key_id"]) == 16
    assert len(sig["baseline_sha256"]) == 64
    # Without the key: read, with one warning, and said to be unchecked.
    r = integrityd("check", "-m", signed, "--json", tree)
    assert r.returncode == 0
    assert events(r)[-1]["signature"]["state"] == "unchecked"
    assert [e["event"] for e in log_lines(r)] == ["signature_not_checked"]


@pytest.mark.parametrize(
    ("tamper", "words"),
    [
        # A forged digest: the changed file's entry made to match its new content.
        ("UPDATE files SET sha256 = ? WHERE name = CAST('a.txt' AS BLOB)", ["entries of"]),
        ("UPDATE files SET mode = mode | 2048 WHERE name = CAST('c.txt' AS BLOB)", ["entries of"]),
        ("DELETE FROM files WHERE name = CAST('d.txt' AS BLOB)", ["entries of"]),
        (
            "INSERT INTO files SELECT parent, CAST('e.txt' AS BLOB), type, size, mtime_ns, "
            "ctime_ns, inode, mode, uid, gid, sha256, target, nlink, rdev, flags, caps, acl, "
            "selinux, xattrs, verified_ns FROM files WHERE name = CAST('c.txt' AS BLOB)",
            ["entries of"],
        ),
        # The root's options: everything excluded would hide every change.
        ("UPDATE roots SET options = json_set(options, '$.exclude', json('[\"*\"]'))", ["roots"]),
        ("DELETE FROM log", ["log"]),
        ("UPDATE log SET entry = replace(entry, 'init', 'tini')", ["log"]),
        ("DELETE FROM meta WHERE key = 'seal'", ["not signed"]),
        ("UPDATE meta SET value = replace(value, '\"seq\":1', '\"seq\":9') WHERE key = 'seal'",
         ["signature"]),
    ],
    ids=[
        "forged-digest", "mode", "deleted-entry", "inserted-entry", "root-options",
        "log-removed", "log-edited", "unsigned", "statement-edited",
    ],
)  # fmt: skip
def test_every_tampering_is_exit_22_with_nothing_compared_or_written(
    tree: Path, signed: Path, keys: tuple[Path, Path], tamper: str, words: list[str]
) -> None:
    (tree / "a.txt").write_text("planted\n")  # what the forged baseline would hide
    _sql(signed, tamper, params=(hashlib.sha256(b"planted\n").digest(),))
    before = _fingerprint(signed)
    _refused(_check(signed, keys[1], tree), *words)
    r = integrityd("verify", "-m", signed, "--verify-key", keys[1], "--json", tree)
    _refused(r, *words)
    assert _fingerprint(signed) == before  # verify recorded no progress either
    # The writer with the key refuses too: signing again would vouch for the forgery.
    r = integrityd("accept", "-m", signed, "--sign-key", keys[0], "--all")
    if "not signed" in words:
        # An unsigned manifest may be signed by whoever has a key: the check above is
        # what stops it being believed meanwhile.
        assert r.returncode == 0
        return
    _refused(r, *(w for w in words if w != "not signed"))
    assert _fingerprint(signed) == before


def test_check_of_a_subtree_checks_what_it_reads(
    tree: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    _sql(signed, "UPDATE files SET size = size + 1 WHERE name = CAST('d.txt' AS BLOB)")
    _refused(_check(signed, keys[1], tree / "sub" / "deep"), "entries of", "deep")
    _refused(_check(signed, keys[1], tree / "sub" / "deep" / "d.txt"), "entries of")
    # A subtree that does not hold the forged entry is what it was signed as.
    r = _check(signed, keys[1], tree / "b.bin")
    assert r.returncode == 0, r.stderr
    assert events(r)[-1]["signature"]["state"] == "valid"


def test_a_manifest_signed_by_another_key_or_swapped_for_unsigned(
    tmp_path: Path, tree: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    other_private, other_public = tmp_path / "o.pem", tmp_path / "o.pub"
    integrityd(
        "key", "new", "--private", other_private, "--public", other_public, "--no-passphrase"
    )
    forged = tmp_path / "forged" / "manifest.db"
    (tree / "a.txt").write_text("planted\n")
    # The intruder's own baseline of the tree as it is now, signed with his key ...
    assert integrityd("init", "-m", forged, "--sign-key", other_private, tree).returncode == 0
    shutil.copy(forged, signed)
    _refused(_check(signed, keys[1], tree), "not by the given key")
    # ... or unsigned.
    unsigned = tmp_path / "unsigned" / "manifest.db"
    assert integrityd("init", "-m", unsigned, tree).returncode == 0
    shutil.copy(unsigned, signed)
    _refused(_check(signed, keys[1], tree), "not signed")
    r = integrityd("watch", "-m", signed, "--verify-key", keys[1])
    assert r.returncode == SIGNATURE


def test_accept_without_the_key_is_refused_and_changes_nothing(
    tree: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    (tree / "a.txt").write_text("planted\n")
    before = _fingerprint(signed)
    for args in (["accept", "--all"], ["init"], ["accept", str(tree / "a.txt")]):
        r = integrityd(*args, "-m", signed, *([tree] if args == ["init"] else []))
        _refused(r, "signed by key", "--sign-key")
        assert _fingerprint(signed) == before
    r = integrityd("import", "-m", signed, "--format", "sha256sum", "--root", tree, os.devnull)
    _refused(r, "signed by key")
    assert _fingerprint(signed) == before
    # With the key: accepted, signed again, one more change in the log.
    r = integrityd("accept", "-m", signed, "--sign-key", keys[0], "--all", "--json")
    assert r.returncode == 0, r.stderr
    assert events(r)[-1]["signature"]["seq"] == 2
    r = _check(signed, keys[1], tree)
    assert r.returncode == 0
    assert findings(r) == []
    # import with the key: a signed baseline from a checksum file.
    sums = tree.parent / "SUMS"
    digest = hashlib.sha256(b"planted\n").hexdigest()
    sums.write_text(f"{digest}  a.txt\n")
    r = integrityd("import", "-m", signed, "--sign-key", keys[0], "--format", "sha256sum",
                   "--root", tree, sums)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = _check(signed, keys[1], tree / "a.txt")
    assert r.returncode == 0, r.stderr
    assert events(r)[-1]["signature"]["seq"] == 3


def test_a_passphrase_protected_key_and_a_wrong_passphrase(
    tmp_path: Path, tree: Path, manifest: Path
) -> None:
    private, public, phrase = tmp_path / "p.pem", tmp_path / "p.pub", tmp_path / "phrase"
    phrase.write_text("correct horse battery staple\n")
    r = integrityd(
        "key", "new", "--private", private, "--public", public, "--passphrase-file", phrase
    )
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in private.read_bytes()
    assert r.stdout.startswith("key ")
    # It refuses to overwrite either file.
    again = integrityd("key", "new", "--private", private, "--public", tmp_path / "x.pub",
                       "--no-passphrase")  # fmt: skip
    assert again.returncode == 16
    assert not (tmp_path / "x.pub").exists()
    wrong = tmp_path / "wrong"
    wrong.write_text("tr0ub4dor&3\n")
    r = integrityd("init", "-m", manifest, "--sign-key", private, "--passphrase-file", wrong, tree)
    _refused(r, "wrong passphrase")
    assert not manifest.exists() or _fingerprint(manifest).count(b"seal") == 0
    env = dict(os.environ, INTEGRITYD_PASSPHRASE="correct horse battery staple")  # noqa: S106
    r = integrityd("init", "-m", manifest, "--sign-key", private, "--json", tree, env=env)
    assert r.returncode == 0, r.stderr
    r = _check(manifest, public, tree)
    assert r.returncode == 0
    # No terminal and no passphrase: a clear refusal, not a hang.
    bare = {k: v for k, v in os.environ.items() if k != "INTEGRITYD_PASSPHRASE"}
    r = integrityd("accept", "-m", manifest, "--sign-key", private, "--all", env=bare)
    _refused(r, "--passphrase-file")


def test_verify_and_watch_run_with_only_the_public_key_and_keep_it_valid(
    tmp_path: Path, tree: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    r = integrityd("verify", "-m", signed, "--verify-key", keys[1], "--json")
    assert r.returncode == 0, r.stderr
    conn = sqlite3.connect(signed)
    recorded = conn.execute("SELECT count(*) FROM files WHERE verified_ns > 0").fetchone()[0]
    conn.close()
    assert recorded > 0  # progress written without the private key ...
    assert _check(signed, keys[1], tree).returncode == 0  # ... and the seal still holds
    w = Watcher(tmp_path, "-m", signed, "--verify-key", keys[1])
    try:
        w.ready()
        w.scanned()
        (tree / "a.txt").write_text("changed\n")
        w.wait("modified", tree / "a.txt")
    finally:
        assert w.stop() == 0
    assert _check(signed, keys[1], tree).returncode == 4  # the change, under a valid seal


def test_watch_refuses_a_forged_baseline_at_start_and_at_a_rescan(
    tmp_path: Path, tree: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    w = Watcher(tmp_path, "-m", signed, "--verify-key", keys[1])
    try:
        w.ready()
        w.scanned()
        _sql(signed, "UPDATE files SET uid = 4242 WHERE name = CAST('c.txt' AS BLOB)")
        w.proc.send_signal(signal.SIGHUP)  # a reload checks the seal again
        code = w.proc.wait(timeout=30)
    finally:
        if w.proc.poll() is None:
            w.stop()
    assert code == SIGNATURE
    assert any("entries of" in e.get("message", "") for e in w.logs), w.logs
    r = integrityd("watch", "-m", signed, "--verify-key", keys[1])
    assert r.returncode == SIGNATURE


def test_the_log_names_every_change_and_its_chain_is_checked(
    tree: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    (tree / "a.txt").write_text("new\n")
    integrityd("accept", "-m", signed, "--sign-key", keys[0], tree / "a.txt")
    r = integrityd("log", "-m", signed, "--verify-key", keys[1], "--json")
    assert r.returncode == 0, r.stderr
    entries = events(r)
    assert [e["event"]["action"] for e in entries] == ["accept", "init"]  # newest first
    assert [e["event"]["sequence"] for e in entries] == [2, 1]
    accept = entries[0]
    assert accept["user"]["id"] == str(os.getuid())
    assert accept["integrityd"]["change"]["accepted"] == [
        {"path": str(tree / "a.txt"), "action": "modified"}
    ]
    assert accept["integrityd"]["change"]["counts"] == {"modified": 1}
    assert accept["process"]["args"][:2] == ["integrityd", "accept"]
    text = integrityd("log", "-m", signed)
    assert text.returncode == 0
    assert text.stdout.index("change 2  accept") < text.stdout.index("change 1  init")
    # An entry removed from the middle of the chain: named, exit 22, with or without a key.
    _sql(signed, "DELETE FROM log WHERE seq = 1")
    for args in ([], ["--verify-key", str(keys[1])]):
        r = integrityd("log", "-m", signed, *args)
        _refused(r, "entry 1")


def test_key_change_needs_the_old_public_key_and_is_logged(
    tmp_path: Path, tree: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    new_private, new_public = tmp_path / "n.pem", tmp_path / "n.pub"
    integrityd("key", "new", "--private", new_private, "--public", new_public, "--no-passphrase")
    # The wrong old key: refused, nothing changed.
    before = _fingerprint(signed)
    r = integrityd("key", "change", "-m", signed, "--verify-key", new_public,
                   "--sign-key", new_private)  # fmt: skip
    _refused(r, "not by the given key")
    assert _fingerprint(signed) == before
    r = integrityd("key", "change", "-m", signed, "--verify-key", keys[1],
                   "--sign-key", new_private)  # fmt: skip
    assert r.returncode == 0, r.stderr
    _refused(_check(signed, keys[1], tree), "not by the given key")
    assert _check(signed, new_public, tree).returncode == 0
    log = events(integrityd("log", "-m", signed, "--verify-key", new_public, "--json"))
    change = log[0]["integrityd"]["change"]
    assert log[0]["event"]["action"] == "key-change"
    assert change["old_key_id"] != change["new_key_id"]


def test_rollback_to_an_older_signed_manifest_is_refused_with_min_seq(
    tmp_path: Path, tree: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    old = tmp_path / "old.db"
    shutil.copy(signed, old)
    (tree / "a.txt").write_text("cleaned up\n")
    integrityd("accept", "-m", signed, "--sign-key", keys[0], "--all")
    r = _check(signed, keys[1], tree)
    seq = events(r)[-1]["signature"]["seq"]
    assert seq == 2
    shutil.copy(old, signed)  # the intruder puts the old, validly signed, baseline back
    r = integrityd("check", "-m", signed, "--verify-key", keys[1], "--min-seq", seq, tree)
    _refused(r, "older than the minimum 2")
    r = integrityd("check", "-m", signed, "--min-seq", seq, tree)  # without a key too
    _refused(r, "older than the minimum 2")


def test_an_old_unsigned_manifest_keeps_working_and_is_signed_by_accept(
    tree: Path, manifest: Path, keys: tuple[Path, Path]
) -> None:
    assert integrityd("init", "-m", manifest, tree).returncode == 0
    r = integrityd("check", "-m", manifest, "--json", tree)
    assert r.returncode == 0
    assert events(r)[-1]["signature"]["state"] == "unsigned"
    assert events(r)[-1]["signature"]["seq"] == 1
    _refused(_check(manifest, keys[1], tree), "not signed")
    r = integrityd("accept", "-m", manifest, "--all", "--sign-key", keys[0])
    assert r.returncode == 0, r.stderr
    assert _check(manifest, keys[1], tree).returncode == 0


def test_export_checks_every_entry_first(tree: Path, signed: Path, keys: tuple[Path, Path]) -> None:
    r = integrityd("export", "-m", signed, "--format", "sha256sum", "--verify-key", keys[1])
    assert r.returncode == 0
    assert "a.txt" in r.stdout
    _sql(signed, "UPDATE files SET size = 1 WHERE name = CAST('d.txt' AS BLOB)")
    r = integrityd("export", "-m", signed, "--format", "sha256sum", "--verify-key", keys[1],
                   tree / "a.txt")  # fmt: skip
    _refused(r, "entries of")


def test_config_names_the_keys(tmp_path: Path, tree: Path, manifest: Path,
                               keys: tuple[Path, Path]) -> None:  # fmt: skip
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"manifest: {manifest}\nroots:\n  - path: {tree}\n"
        f"signing:\n  private_key: {keys[0]}\n  public_key: {keys[1]}\n"
    )
    assert integrityd("init", "-c", cfg).returncode == 0
    r = integrityd("check", "-c", cfg, "--json")
    assert events(r)[-1]["signature"]["state"] == "valid"
    bad = tmp_path / "bad.yaml"
    bad.write_text("signing:\n  public_key: relative.pub\n  min_seq: -1\n")
    r = integrityd("config", "check", bad)
    assert r.returncode == 17
    assert f"{bad}:2: signing.public_key" in r.stderr
    assert f"{bad}:3: signing.min_seq" in r.stderr


def test_digests_are_pinned() -> None:
    """The encoding signatures depend on: a Python upgrade must not change it."""
    rows = [(b"a", "file", 5, 1, 2, 3, 0o100644, 0, 0, bytes(32), None, 1, 0, 0, None, "", None,
             "{}"), (b"\xff", "dir", 4096, 1, 2, 3, 0o40755, 0, 0, None, None, 2, 0, 0, None,
             None, None, None)]  # fmt: skip
    assert seal.dir_digest(rows).hex() == PINNED_DIR
    stream = seal.StreamedDigest()
    many = rows * 700  # over one run of 512
    for r in many:
        stream.add(r)
    assert stream.digest() == seal.dir_digest(many)
    assert seal.baseline_digest([(b"/r", "{}", 1)], [(b"/r", bytes(32), 2)]).hex() == PINNED_TOP


PINNED_DIR = "a4159ce03e0a93afce92d36410ced291be63c1453f7fca1bba3a291267ebef7f"
PINNED_TOP = "fb3fdeb1172af5f7e53e6277b7e34d6a8d49ed28092b68ae287f8caa8e09f161"


def test_the_summary_json_is_valid_json_with_signature(
    tree: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    r = integrityd("check", "-m", signed, "--verify-key", keys[1], tree)
    assert "signature: valid, key" in r.stdout
    json.dumps(events(_check(signed, keys[1], tree))[-1])


def test_each_accept_keeps_the_directory_digests_true(
    tree: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    """Only the directories a writer touched are hashed again: every kind of change."""
    sign = ["-m", signed, "--sign-key", keys[0]]
    for n in range(2, 6):
        if n == 2:  # a new directory with a new subdirectory
            (tree / "new" / "x").mkdir(parents=True)
            (tree / "new" / "x" / "f").write_text("f")
        elif n == 3:  # a directory removed
            shutil.rmtree(tree / "sub" / "deep")
        elif n == 4:  # a directory replaced by a file
            shutil.rmtree(tree / "new")
            (tree / "new").write_text("now a file")
        else:  # metadata only
            (tree / "a.txt").chmod(0o600)
        r = integrityd("accept", *sign, "--all", "--json")
        assert r.returncode == 0, r.stderr
        assert events(r)[-1]["signature"]["seq"] == n
        r = _check(signed, keys[1], tree)
        assert r.returncode == 0, r.stderr
        assert findings(r) == []
    # One path accepted, in a directory of its own: the rest stays as signed.
    (tree / "sub" / "c.txt").write_text("changed\n")
    (tree / "b.bin").write_text("changed too\n")
    assert integrityd("accept", *sign, tree / "sub" / "c.txt").returncode == 0
    r = _check(signed, keys[1], tree)
    assert r.returncode == 4
    assert findings(r) == [("modified", str(tree / "b.bin"))]


def test_a_huge_directory_is_checked_as_it_is_read_in_batches(
    tmp_path: Path, manifest: Path, keys: tuple[Path, Path]
) -> None:
    huge = tmp_path / "huge"
    huge.mkdir()
    for i in range(3000):  # more than scan.HUGE_DIR: read and compared in batches
        (huge / f"f{i:05d}").write_bytes(b"x" * (i % 7))
    assert integrityd("init", "-m", manifest, "--sign-key", keys[0], huge).returncode == 0
    r = _check(manifest, keys[1], huge)
    assert r.returncode == 0, r.stderr
    assert events(r)[-1]["signature"]["state"] == "valid"
    _sql(manifest, "UPDATE files SET size = 99 WHERE name = CAST('f02999' AS BLOB)")
    _refused(_check(manifest, keys[1], huge), "entries of", str(huge))


def test_watch_ends_when_a_live_change_reads_a_forged_directory(
    tmp_path: Path, tree: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    w = Watcher(tmp_path, "-m", signed, "--verify-key", keys[1])
    try:
        w.ready()
        w.scanned()
        _sql(signed, "UPDATE files SET mode = 33279 WHERE name = CAST('c.txt' AS BLOB)")
        (tree / "sub" / "c.txt").write_text("planted\n")  # the worker reads sub/ again
        code = w.proc.wait(timeout=30)
    finally:
        if w.proc.poll() is None:
            w.stop()
    assert code == SIGNATURE
    assert not [e for e in w.events if "file" in e], w.events  # nothing reported from it


def _on_terminal(args: list[str], answers: list[str]) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as its controlling terminal; answer each prompt."""
    master, slave = os.openpty()

    def take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    p = subprocess.Popen(
        [sys.executable, "-m", "integrityd", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=take_terminal,  # noqa: PLW1509 - the child's own terminal, nothing shared
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 30
    for answer in answers:
        while b"passphrase" not in seen.rsplit(b"\n", 1)[-1] and time.monotonic() < deadline:
            seen += os.read(master, 4096)
        seen += b"\n"
        os.write(master, answer.encode() + b"\n")
    code = p.wait(timeout=30)
    with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
        while chunk := os.read(master, 4096):
            seen += chunk
    os.close(master)
    return code, seen.decode(errors="replace")


def test_key_new_asks_for_the_passphrase_twice_on_a_terminal(
    tmp_path: Path, tree: Path, manifest: Path
) -> None:
    private, public = tmp_path / "t.pem", tmp_path / "t.pub"
    code, out = _on_terminal(
        ["key", "new", "--private", str(private), "--public", str(public)], ["s3cret", "s3cret"]
    )
    assert code == 0, out
    assert "s3cret" not in out  # not echoed
    assert b"ENCRYPTED PRIVATE KEY" in private.read_bytes()
    code, out = _on_terminal(
        ["init", "-m", str(manifest), "--sign-key", str(private), str(tree)], ["s3cret"]
    )
    assert code == 0, out
    assert _check(manifest, public, tree).returncode == 0
    code, out = _on_terminal(
        ["key", "new", "--private", str(tmp_path / "u.pem"), "--public", str(tmp_path / "u.pub")],
        ["one", "two"],
    )
    assert code == 16
    assert "differ" in out
    assert not (tmp_path / "u.pem").exists()


def test_digests_rewritten_with_their_directory_digest_break_the_top(
    tree: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    """The intruder who reads seal.py: entry and directory digest changed together."""
    (tree / "a.txt").write_text("planted\n")
    conn = sqlite3.connect(signed)
    conn.execute(
        "UPDATE files SET sha256 = ?, size = 8 WHERE name = CAST('a.txt' AS BLOB)",
        (hashlib.sha256(b"planted\n").digest(),),
    )
    parent = os.fsencode(tree)
    rows = conn.execute(
        f"SELECT {seal.COLUMNS} FROM files WHERE parent = ? ORDER BY name",  # noqa: S608
        (parent,),
    ).fetchall()
    conn.execute("UPDATE dirs SET digest = ? WHERE parent = ?", (seal.dir_digest(rows), parent))
    conn.commit()
    conn.close()
    _refused(_check(signed, keys[1], tree), "roots or directories")


@pytest.mark.parametrize(
    "schema",
    [
        # Rewrites what the next accept inserts, and the digest with it: then signed.
        "CREATE TRIGGER t AFTER INSERT ON files BEGIN "
        "UPDATE files SET sha256 = zeroblob(32) WHERE name = CAST('c.txt' AS BLOB); END",
        # The real table renamed, a view in its place.
        "ALTER TABLE files RENAME TO files_real; CREATE VIEW files AS SELECT * FROM files_real",
    ],
    ids=["trigger", "view"],
)
def test_a_trigger_or_a_view_in_the_manifest_is_refused(
    tree: Path, signed: Path, keys: tuple[Path, Path], schema: str
) -> None:
    conn = sqlite3.connect(signed)
    conn.executescript(schema)
    conn.close()
    before = _fingerprint(signed)
    _refused(_check(signed, keys[1], tree), "never creates")
    (tree / "a.txt").write_text("new\n")
    _refused(integrityd("accept", "-m", signed, "--sign-key", keys[0], "--all"), "never creates")
    assert _fingerprint(signed) == before
    # Unsigned, the same schema is a damaged manifest (18): never written through.
    plain = signed.parent / "plain.db"
    assert integrityd("init", "-m", plain, tree).returncode == 0
    conn = sqlite3.connect(plain)
    conn.executescript(schema)
    conn.close()
    r = integrityd("check", "-m", plain, tree)
    assert r.returncode == 18
    assert "never creates" in r.stderr


def test_verify_progress_is_not_signed_but_a_full_verify_rehashes_all(
    tree: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    """What verify records is the readers' own: an intruder may postpone a file, not hide it.

    With a budget, verify takes the files least recently verified; an intruder who marks
    a changed file as verified in the far future moves it to the end of the queue (the
    README says so). A verify without a budget, and every check, still read it.
    """
    (tree / "sub" / "c.txt").write_text("tampered\n")
    _sql(signed, "UPDATE files SET verified_ns = 9e18 WHERE name = CAST('c.txt' AS BLOB)")
    r = integrityd("verify", "-m", signed, "--verify-key", keys[1], "--json")
    assert r.returncode == 4, r.stderr
    assert ("modified", str(tree / "sub" / "c.txt")) in findings(r)
    assert events(r)[-1]["signature"]["state"] == "valid"
