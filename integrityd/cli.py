"""Command line: ``main(argv) -> exit code``; the only place that maps errors to codes.

Start-up time matters for a command people run by hand and scripts run often: the
command line is parsed with light imports only. For ``watch``, the process server that
forks the daemon's workers is started then, and the heavy modules (SQLite, YAML) are
imported here while that server imports them in parallel; structlog is imported when
the first message is logged (see ``logsetup``). The audit commands fork their workers
from this process (see ``audit.run``), and ``entry`` skips the interpreter's teardown.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from integrityd import __version__
from integrityd.errors import (
    ConfigError,
    ExitCode,
    Fatal,
    IntegritydError,
    Interrupted,
    UsageError,
)
from integrityd.paths import resolved_keeping_name

if TYPE_CHECKING:
    from collections.abc import Iterator

    from integrityd.config import Budget, Config
    from integrityd.keys import PublicKey, SigningKey
    from integrityd.messages import FileState, Summary
    from integrityd.policy import Command

FORKSERVER_PRELOAD = ["integrityd.collector", "integrityd.scan"]
"""Imported once by the daemon's process server, so that each forked worker starts ready."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage(), self.prog)


def default_manifest() -> bytes:
    """/var/lib/integrityd for root, the XDG state directory for everyone else."""
    if os.geteuid() == 0:
        return b"/var/lib/integrityd/manifest.db"
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.fsencode(os.path.join(state, "integrityd", "manifest.db"))


def _abs(path: str) -> bytes:
    return os.fsencode(os.path.realpath(path))


def _manifest(args: argparse.Namespace, cfg: Config) -> bytes:
    """-m, else the config's manifest, else the default location."""
    if args.manifest:
        return resolved_keeping_name(args.manifest)
    return cfg.manifest or default_manifest()


def _load(args: argparse.Namespace) -> Config:
    from integrityd import config, logsetup  # noqa: PLC0415 - see the module docstring

    if args.config:
        from integrityd import configfile  # noqa: PLC0415 - PyYAML only when there is YAML

        cfg = configfile.load(args.config)
    else:
        cfg = config.Config()
    if getattr(args, "workers", None):
        cfg = dataclasses.replace(cfg, workers=args.workers)
    logsetup.configure(cfg.log)
    return cfg


def _verify_key(args: argparse.Namespace, cfg: Config) -> PublicKey | None:
    """The public key that checks the seal: --verify-key, else the config's."""
    path = getattr(args, "verify_key", None) or cfg.signing.public_key
    if path is None:
        return None
    from integrityd import keys  # noqa: PLC0415 - cryptography only when there is a key

    return keys.load_public(path)


def _sign_key(args: argparse.Namespace, cfg: Config) -> SigningKey | None:
    """The private key that signs: --sign-key, else the config's; unlocked here."""
    path = getattr(args, "sign_key", None) or cfg.signing.private_key
    if path is None:
        return None
    from integrityd import keys  # noqa: PLC0415 - cryptography only when there is a key

    return keys.load_private(path, getattr(args, "passphrase_file", None))


def _min_seq(args: argparse.Namespace, cfg: Config) -> int:
    given: int | None = getattr(args, "min_seq", None)
    return cfg.signing.min_seq if given is None else given


def _audit(command: Command, args: argparse.Namespace, budget: Budget | None = None) -> int:
    cfg = _load(args)
    metrics_file = args.metrics_file or cfg.metrics.textfile
    # What the run is about, for the metrics of a run that fails: the PATHs or the
    # config's roots, and once they are known, the scopes themselves.
    paths = [_abs(p) for p in args.paths]
    starts = list(paths) or [r.path for r in cfg.roots]
    try:
        summary = _audit_run(command, args, cfg, budget, paths=paths, starts=starts)
    except IntegritydError as e:
        if metrics_file:
            # A run that failed (a forged manifest: 22) must not leave the last good run's
            # exit code standing on the dashboards.
            from integrityd.metrics import failed_summary, write_textfile  # noqa: PLC0415

            with contextlib.suppress(IntegritydError):  # the run's own error is the news
                write_textfile(metrics_file, failed_summary(command, starts, e.exit_code))
        raise
    if metrics_file:
        from integrityd.metrics import write_textfile  # noqa: PLC0415 - see the module docstring

        write_textfile(metrics_file, summary)
    if getattr(args, "summary_file", None):
        from integrityd.report import Context, summary_event  # noqa: PLC0415

        line = json.dumps(summary_event(summary, Context())) + "\n"
        _save_atomic(args.summary_file, line.encode())
    return summary.status


def _audit_run(
    command: Command,
    args: argparse.Namespace,
    cfg: Config,
    budget: Budget | None,
    *,
    paths: list[bytes],
    starts: list[bytes],
) -> Summary:
    """The run itself; ``starts`` becomes its scopes' paths once they are resolved."""
    from integrityd import audit  # noqa: PLC0415 - see the module docstring
    from integrityd.manifest import journal_files  # noqa: PLC0415
    from integrityd.messages import Job  # noqa: PLC0415
    from integrityd.scopes import resolve_scopes  # noqa: PLC0415

    manifest = _manifest(args, cfg)
    scopes = resolve_scopes(command, cfg, manifest, paths)
    starts[:] = [s.start for s in scopes]
    json_out = args.json or (not sys.stdout.isatty() and cfg.report == "json")
    from integrityd.policy import POLICIES  # noqa: PLC0415

    writes = POLICIES[command].writes
    job = Job(
        command=command,
        manifest=manifest,
        scopes=scopes,
        skip=journal_files(manifest),
        json=json_out,
        progress=sys.stderr.isatty() and not args.no_progress,
        log=cfg.log,
        max_rate=getattr(args, "max_rate", None),
        idle=getattr(args, "idle_io", False),
        io_depth=cfg.io_depth,
        verify_key=None if writes else _verify_key(args, cfg),
        sign_key=_sign_key(args, cfg) if writes else None,
        min_seq=_min_seq(args, cfg),
        argv=tuple(sys.argv[1:]),
        max_findings=0 if args.summary_only else args.max_findings,
        packages=cfg.packages.database() if POLICIES[command].compares else None,
    )
    if POLICIES[command].by_package and job.packages is None:
        raise UsageError(
            f"accept --packages needs a package database: {cfg.packages.dpkg_admindir}/status "
            "not found, or packages.manager is none"
        )
    return audit.run(job, cfg, budget)


def _save_atomic(path: str, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename over, fsync the directory."""
    import tempfile  # noqa: PLC0415 - it imports shutil, bz2, lzma and random: ~4 ms

    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".integrityd-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise UsageError(f"cannot write {path}: {e.strerror}") from e
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _cmd_init(args: argparse.Namespace) -> int:
    return _audit("init", args)


def _cmd_check(args: argparse.Namespace) -> int:
    return _audit("check", args)


def _cmd_accept(args: argparse.Namespace) -> int:
    if args.grown and args.packages:
        raise UsageError("accept takes --grown or --packages, not both: run one after the other")
    if args.grown or args.packages:
        if args.all:
            flag = "--grown" if args.grown else "--packages"
            raise UsageError(f"accept {flag} takes PATHs or none (every root), not --all")
        return _audit("accept-grown" if args.grown else "accept-packages", args)
    if bool(args.all) == bool(args.paths):
        raise UsageError("accept needs either --all or the PATHs whose changes to accept")
    return _audit("accept", args)


def _cmd_verify(args: argparse.Namespace) -> int:
    from integrityd.config import parse_budget  # noqa: PLC0415 - see the module docstring

    try:
        budget = parse_budget(args.budget) if args.budget else None
    except ValueError as e:
        raise UsageError(f"--budget: {e}") from e
    if args.summary_file and not os.path.isdir(os.path.dirname(os.path.abspath(args.summary_file))):
        raise UsageError(f"--summary-file: the directory of {args.summary_file} does not exist")
    return _audit("verify", args, budget)


def _cmd_watch(args: argparse.Namespace) -> int:
    from integrityd import daemon  # noqa: PLC0415 - see the module docstring

    cfg = _load(args)
    json_out = args.json or not sys.stdout.isatty()
    return daemon.run(
        args.config,
        cfg,
        _manifest(args, cfg),
        json_out,
        verify_key=args.verify_key,
        min_seq=args.min_seq,
    )


def _cmd_export(args: argparse.Namespace) -> int:
    from integrityd.interop import Exporter  # noqa: PLC0415 - see the module docstring
    from integrityd.manifest import ManifestStore  # noqa: PLC0415

    cfg = _load(args)
    manifest = _manifest(args, cfg)
    base = _abs(args.relative_to) if args.relative_to else None
    exporter = Exporter(args.format, os.fsencode(os.getcwd()))
    out = sys.stdout.buffer
    key = _verify_key(args, cfg)
    with ManifestStore.open(manifest, "read") as store, store.guard():
        # Every entry, before the first line: a file for sha256sum -c must not be forged.
        store.signature(key, _min_seq(args, cfg), everything=True)
        starts = [_abs(p) for p in args.paths] or (
            [base] if base else [r.path for r in store.roots()]
        )
        named = itertools.chain.from_iterable(_named(store.entries(s), base) for s in starts)
        for line in exporter.lines(named):
            out.write(line)
    out.flush()
    if exporter.skipped:
        from integrityd.report import count  # noqa: PLC0415 - see the module docstring

        left = count(exporter.skipped, "file")
        msg = f"{left} left out: {args.format} cannot hold names with a newline"
        _log().warning("export_incomplete", message=msg, skipped=exporter.skipped)
        return int(ExitCode.INCOMPLETE)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from integrityd import changelog  # noqa: PLC0415 - see the module docstring
    from integrityd.config import RootConfig  # noqa: PLC0415
    from integrityd.errors import RootError  # noqa: PLC0415
    from integrityd.interop import baseline_rows, parse  # noqa: PLC0415
    from integrityd.manifest import ManifestStore  # noqa: PLC0415

    cfg = _load(args)
    manifest = _manifest(args, cfg)
    root = _abs(args.root)
    if not os.path.isdir(root):
        raise RootError(f"--root {args.root} is not a directory")
    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {args.file}: {e.strerror}") from e
    rows, missing = baseline_rows(root, parse(args.format, data, args.file))
    sign_key = _sign_key(args, cfg)
    with ManifestStore.open(manifest, "create") as store, store.guard():
        store.check_writer(sign_key, "import")
        store.delete([root])  # the file becomes the whole baseline below the root
        store.write(rows)
        store.put_root(RootConfig(path=root), os.lstat(root).st_dev)
        counts = {"added": len(rows), "missing": len(missing)}
        store.reseal(sign_key, changelog.entry("import", sys.argv[1:], [root], counts))
        store.commit()
    from integrityd.report import count  # noqa: PLC0415 - see the module docstring

    what = count(len(rows), "entry", "entries")
    print(f"imported {what} below {os.fsdecode(root)} into {os.fsdecode(manifest)}")
    if missing:
        msg = f"{len(missing)} listed files were not found and are not in the baseline"
        _log().warning("import_incomplete", message=msg, first=os.fsdecode(missing[0]))
        return int(ExitCode.INCOMPLETE)
    return 0


def _cmd_key_new(args: argparse.Namespace) -> int:
    from integrityd import keys  # noqa: PLC0415 - see the module docstring

    if args.no_passphrase and args.passphrase_file:
        raise UsageError("--no-passphrase and --passphrase-file exclude each other")
    secret = None
    if not args.no_passphrase:
        secret = keys.passphrase(args.passphrase_file, confirm=True)
        if secret is None:
            msg = (
                "no passphrase: there is no terminal to ask on; give --passphrase-file, set "
                f"{keys.PASSPHRASE_ENV}, or --no-passphrase for a key without one"
            )
            raise UsageError(msg)
    public = keys.new(args.private, args.public, secret)
    protected = "protected by a passphrase" if secret is not None else "NOT protected"
    print(f"key {public.id}: private key {args.private} ({protected}), public key {args.public}")
    return 0


def _cmd_key_change(args: argparse.Namespace) -> int:
    from integrityd import changelog, keys  # noqa: PLC0415 - see the module docstring
    from integrityd.manifest import ManifestStore  # noqa: PLC0415

    cfg = _load(args)
    manifest = _manifest(args, cfg)
    old = keys.load_public(args.verify_key)
    new = keys.load_private(args.sign_key, args.passphrase_file)
    with ManifestStore.open(manifest, "write") as store, store.guard():
        # The whole baseline, with the old key: the new one vouches only for what it held.
        info = store.signature(old, everything=True)
        entry = changelog.entry(
            "key-change", sys.argv[1:], [], {}, old_key_id=old.id, new_key_id=new.public.id
        )
        signed = store.reseal(new, entry)
        store.commit()
    print(
        f"{os.fsdecode(manifest)}: re-signed with key {new.public.id} (was {info.key_id}); "
        f"change {signed.seq}. Give readers the new public key."
    )
    return 0


def _cmd_log(args: argparse.Namespace) -> int:
    from integrityd import changelog, seal  # noqa: PLC0415 - see the module docstring
    from integrityd.errors import SignatureError  # noqa: PLC0415
    from integrityd.manifest import ManifestStore  # noqa: PLC0415
    from integrityd.report import Context  # noqa: PLC0415

    cfg = _load(args)
    manifest = _manifest(args, cfg)
    key = _verify_key(args, cfg)
    with ManifestStore.open(manifest, "read") as store, store.guard():
        info = store.signature(key, _min_seq(args, cfg))  # with a key: chain and signature
        raw = store.log_entries()
        if key is None:  # without one the chain is still checked: a break is evidence
            seal.check_chain_rows(raw, f"manifest {os.fsdecode(manifest)}")
    entries = []
    for seq, text, _ in reversed(raw):
        try:
            entries.append(json.loads(text))
        except ValueError as e:
            raise SignatureError(f"change log entry {seq} is not JSON") from e
    if args.json:
        host = dict(Context().host)
        for one in entries:
            print(json.dumps(changelog.ecs(one, host)))
    else:
        from integrityd.report import signature_text  # noqa: PLC0415

        print(f"{os.fsdecode(manifest)}: {signature_text(info.event())}\n")
        print(changelog.text(entries), end="")
    return 0


def _named(entries: Iterator[FileState], base: bytes | None) -> Iterator[tuple[bytes, FileState]]:
    """Pair each entry with its name: absolute, or relative to ``base`` (others are skipped)."""
    prefix = base.rstrip(b"/") + b"/" if base else b""
    for s in entries:
        if base is None:
            yield s.path, s
        elif s.path == base:
            yield b".", s
        elif s.path.startswith(prefix):
            yield s.path[len(prefix) :], s


def _cmd_reload(args: argparse.Namespace) -> int:
    """Check the config, SIGHUP the daemon, and wait until it says how the reload went.

    systemd 252 has no Type=notify-reload: with ExecReload=kill -HUP, `systemctl reload`
    returned before the reload happened, and 0 whatever came of it. This is the unit's
    ExecReload instead: it returns when the daemon has taken the new config, and fails
    (with the daemon's reason) when it has not.
    """
    import time  # noqa: PLC0415

    from integrityd import configfile  # noqa: PLC0415 - see the module docstring
    from integrityd.daemon import reload_path  # noqa: PLC0415

    try:
        cfg = configfile.load(args.config) if args.config else None
    except ConfigError as e:
        for problem in e.problems:  # every mistake in the file, one line each
            _log().error("config_error", message=problem, exit_code=int(e.exit_code))
        return int(e.exit_code)
    from integrityd.config import Config  # noqa: PLC0415

    manifest = _manifest(args, cfg or Config())
    path = reload_path(manifest)

    def outcome() -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise UsageError(f"cannot read {os.fsdecode(path)}: {e.strerror}") from e

    before = outcome()
    try:
        os.kill(args.pid, signal.SIGHUP)
    except ProcessLookupError:
        raise UsageError(f"--pid {args.pid}: no such process") from None
    except PermissionError:
        raise UsageError(f"--pid {args.pid}: not ours to signal") from None
    deadline = time.monotonic() + args.timeout
    while (now := outcome()) == before:
        try:
            os.kill(args.pid, 0)
        except ProcessLookupError:
            msg = f"the daemon (pid {args.pid}) ended during the reload; see its log"
            raise IntegritydError(msg) from None
        if time.monotonic() > deadline:
            msg = f"the daemon (pid {args.pid}) did not finish the reload in {args.timeout} s"
            raise IntegritydError(msg)
        time.sleep(0.02)
    result = json.loads(now or b"{}")
    if not result.get("ok"):
        _log().error("reload_failed", message=result.get("message"), exit_code=int(Fatal.CONFIG))
        return int(Fatal.CONFIG)
    print(f"integrityd (pid {args.pid}): reloaded")
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    from integrityd import configfile  # noqa: PLC0415 - see the module docstring

    try:
        cfg = configfile.load(args.file, roots_exist=not args.roots_may_be_missing)
    except ConfigError as e:
        for problem in e.problems:  # every mistake in the file, one line each
            _log().error("config_error", message=problem, exit_code=int(e.exit_code))
        return int(e.exit_code)
    roots = ", ".join(os.fsdecode(r.path) for r in cfg.roots) or "none"
    print(f"{args.file}: ok (roots: {roots})")
    from integrityd.scopes import pending_options  # noqa: PLC0415 - see the module docstring

    for line in pending_options(cfg, cfg.manifest or default_manifest()):
        print(f"  {line}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"expected a number >= 1, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _rate(text: str) -> int:
    from integrityd.units import parse_rate  # noqa: PLC0415 - see the module docstring

    try:
        return parse_rate(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="integrityd", description="File-integrity checker for Linux.")
    p.add_argument("--version", action="version", version=f"integrityd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def audit_cmd(
        name: str, func: Callable[[argparse.Namespace], int], text: str, progress: bool = True
    ) -> _Parser:
        c: _Parser = sub.add_parser(name, help=text, description=text)
        _manifest_flags(c)
        c.add_argument("--json", action="store_true", help="one JSON event per line on stdout")
        c.add_argument(
            "-j", "--workers", type=_positive, help="hash worker processes (default: CPUs)"
        )
        if progress:
            c.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
        if name in ("init", "accept"):
            _writer_flags(c)
        else:
            _reader_flags(c)
        if progress:  # the one-shot commands
            c.add_argument(
                "--metrics-file",
                metavar="FILE",
                help="write Prometheus metrics here (node_exporter textfile), atomically",
            )
            c.add_argument(
                "--max-findings",
                type=_natural,
                metavar="N",
                help="report at most N findings, then how many more (the summary counts all)",
            )
            c.add_argument("--summary-only", action="store_true", help="report the summary alone")
        c.set_defaults(func=func)
        return c

    audit_cmd("init", _cmd_init, "baseline PATHs (or the config's roots)").add_argument(
        "paths", nargs="*", metavar="PATH"
    )
    audit_cmd(
        "check", _cmd_check, "compare PATHs (or every baselined root) with the baseline"
    ).add_argument("paths", nargs="*", metavar="PATH")
    ver = audit_cmd("verify", _cmd_verify, "re-hash baselined files, least recently verified first")
    ver.add_argument(
        "--budget", help="stop after a duration (90m, 2h), a size (200G) or a fraction (1/7)"
    )
    ver.add_argument("--summary-file", metavar="FILE", help="also write the JSON summary here")
    ver.add_argument(
        "--max-rate", type=_rate, metavar="RATE", help="read at most RATE bytes/s in all (100M)"
    )
    ver.add_argument(
        "--idle-io", action="store_true", help="idle I/O class and lowest CPU priority"
    )
    ver.add_argument("paths", nargs="*", metavar="PATH")
    acc = audit_cmd("accept", _cmd_accept, "re-baseline PATHs (or --all) after review")
    acc.add_argument("--all", action="store_true", help="accept every change in every root")
    acc.add_argument(
        "--grown",
        action="store_true",
        help="accept only files that grew or were rotated under a 'grow' rule (logs)",
    )
    acc.add_argument(
        "--packages",
        action="store_true",
        help="accept only files whose new content matches the package database (after an "
        "upgrade), with nothing else changed",
    )
    acc.add_argument("paths", nargs="*", metavar="PATH")

    audit_cmd(
        "watch",
        _cmd_watch,
        "watch the baselined roots and report each change as it happens (the daemon)",
        progress=False,
    )

    _interop_parsers(sub)
    _signing_parsers(sub)

    rl = sub.add_parser(
        "reload",
        help="reload a running daemon's config and wait until it has (systemd's ExecReload)",
        description="Check the config, send SIGHUP to the daemon, and wait until it has "
        "reloaded: exit 0 when it took the config, 17 when it refused it.",
    )
    _manifest_flags(rl)
    rl.add_argument("--pid", type=_positive, required=True, help="the daemon's PID ($MAINPID)")
    rl.add_argument("--timeout", type=_positive, default=60, help="seconds to wait (60)")
    rl.set_defaults(func=_cmd_reload)

    cfg = sub.add_parser("config", help="work with config files")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    chk = cfg_sub.add_parser("check", help="validate a config file")
    chk.add_argument("file", metavar="CONFIG")
    chk.add_argument(
        "--roots-may-be-missing",
        action="store_true",
        help="accept a root that does not exist now (the daemon's reload: mounted later)",
    )
    chk.set_defaults(func=_cmd_config_check)
    return p


def _interop_parsers(sub: Any) -> None:  # noqa: ANN401 - argparse's subparsers action
    """``export`` and ``import``."""
    exp = sub.add_parser(
        "export",
        help="write the baseline as a checksum file (sha256sum, bsd, hashdeep, mtree) to stdout",
        description="Write the baseline as a checksum file to stdout, for sha256sum -c and others.",
    )
    _manifest_flags(exp)
    exp.add_argument("--format", required=True, choices=["sha256sum", "bsd", "hashdeep", "mtree"])
    exp.add_argument("--relative-to", metavar="DIR", help="write names relative to DIR")
    exp.add_argument("paths", nargs="*", metavar="PATH", help="subtrees to export (default: all)")
    _reader_flags(exp)
    exp.set_defaults(func=_cmd_export)

    imp = sub.add_parser(
        "import",
        help="take a sha256sum, bsd or hashdeep file as the baseline below --root",
        description="Take a checksum file as the baseline for the files below DIR "
        "(names relative to DIR, as sha256sum writes them when run there).",
    )
    _manifest_flags(imp)
    imp.add_argument("--format", required=True, choices=["sha256sum", "bsd", "hashdeep"])
    imp.add_argument(
        "--root", required=True, metavar="DIR", help="directory the names are relative to"
    )
    imp.add_argument("file", metavar="FILE", help="the checksum file")
    _writer_flags(imp)
    imp.set_defaults(func=_cmd_import)


def _signing_parsers(sub: Any) -> None:  # noqa: ANN401 - argparse's subparsers action
    """``key new``, ``key change`` and ``log``."""
    key = sub.add_parser("key", help="make signing keys, or move a manifest to a new key")
    key_sub = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    kn = key_sub.add_parser(
        "new",
        help="write a new Ed25519 key pair",
        description="Write a new Ed25519 key pair: a PKCS#8 private key (0600, encrypted "
        "with a passphrase unless --no-passphrase) and its public key.",
    )
    kn.add_argument("--private", required=True, metavar="FILE", help="private key file to create")
    kn.add_argument("--public", required=True, metavar="FILE", help="public key file to create")
    kn.add_argument("--passphrase-file", metavar="F", help="read the passphrase from F")
    kn.add_argument(
        "--no-passphrase", action="store_true", help="leave the private key unencrypted"
    )
    kn.set_defaults(func=_cmd_key_new)
    kc = key_sub.add_parser(
        "change",
        help="re-sign a manifest with a new key (checked with the old public key first)",
        description="Check the whole baseline with the OLD public key, then sign it with "
        "the NEW private key; the change is an entry in the change log.",
    )
    _manifest_flags(kc)
    kc.add_argument("--verify-key", required=True, metavar="OLD", help="the old public key")
    kc.add_argument("--sign-key", required=True, metavar="NEW", help="the new private key")
    kc.add_argument("--passphrase-file", metavar="F", help="the new key's passphrase, from F")
    kc.set_defaults(func=_cmd_key_change)

    lg = sub.add_parser(
        "log",
        help="show the change log: every init, accept, import and key change",
        description="Show the change log, newest first; with --verify-key, check its "
        "chain and signature first.",
    )
    _manifest_flags(lg)
    lg.add_argument("--json", action="store_true", help="one ECS event per entry")
    _reader_flags(lg)
    lg.set_defaults(func=_cmd_log)


def _manifest_flags(c: argparse.ArgumentParser) -> None:
    c.add_argument("-c", "--config", help="YAML config file")
    c.add_argument("-m", "--manifest", help="manifest file (default: see README)")


def _reader_flags(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--verify-key",
        metavar="FILE",
        help="public key: refuse a baseline it did not sign (exit 22)",
    )
    c.add_argument(
        "--min-seq",
        type=_natural,
        metavar="N",
        help="refuse a baseline older than change N of its log (a rollback; exit 22)",
    )


def _writer_flags(c: argparse.ArgumentParser) -> None:
    c.add_argument("--sign-key", metavar="FILE", help="private key that signs the new baseline")
    c.add_argument("--passphrase-file", metavar="F", help="the signing key's passphrase, from F")


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        msg = f"expected a number >= 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _start_forkserver() -> Callable[[], None]:
    """Start the daemon's process server; return what removes the directory of its socket.

    multiprocessing makes that directory in the temporary directory and removes it at
    interpreter exit, which ``entry`` skips: every daemon stopped left one behind. Under
    the systemd units, whose filesystem is read-only, there is no /tmp to write to:
    they set TMPDIR, and without a usable one this is a config error, not a crash.
    """
    import multiprocessing.forkserver  # noqa: PLC0415 - only the daemon uses it
    import multiprocessing.util  # noqa: PLC0415
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    try:
        tempfile.gettempdir()
    except FileNotFoundError as e:
        msg = f"{e.strerror}; set TMPDIR to a directory integrityd may write to"
        raise ConfigError(msg) from None
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    # The server ignores SIGINT itself; that it ignores SIGTERM too, it inherits from
    # here (exec keeps an ignored signal ignored). A SIGTERM sent to the whole process
    # group (KillMode=control-group, timeout(1), kill -- -PGID) killed it, and the daemon
    # then reported its collector as dead. Blocked meanwhile, so that a SIGTERM for this
    # process is not lost: a blocked signal stays pending even while ignored.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    handler = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGTERM, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    temp = multiprocessing.util.get_temp_dir()

    def clean_up() -> None:
        # Stop the process server and the resource tracker, and wait for them, before
        # this process exits: left to stop on their own (they notice our exit), they
        # were still there when systemd, seeing the main process gone, killed the rest
        # of the unit. multiprocessing has no public call for this; these are the
        # methods its own tests use (Python 3.11 to 3.13).
        import multiprocessing.resource_tracker  # noqa: PLC0415

        helpers: tuple[Any, ...] = (
            multiprocessing.forkserver._forkserver,
            multiprocessing.resource_tracker._resource_tracker,
        )
        for helper in helpers:
            with contextlib.suppress(Exception):  # an exit path must not fail on this
                helper._stop()
        shutil.rmtree(temp, ignore_errors=True)

    return clean_up


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (findings bits, or a fatal code)."""
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    clean_up: Callable[[], None] | None = None
    try:
        args = _parser().parse_args(argv)
        if args.func is _cmd_watch:
            clean_up = _start_forkserver()
        from integrityd import logsetup  # noqa: PLC0415 - see the module docstring
        from integrityd.config import LogConfig  # noqa: PLC0415

        logsetup.configure(LogConfig())
        code: int = args.func(args)
    except Interrupted as e:
        _log().error("interrupted", message=str(e), signal=e.signum)
        return e.code
    except UsageError as e:
        if sys.stderr.isatty():  # as argparse itself would say it
            sys.stderr.write(f"{e.usage or ''}{e.prog}: error: {e}\n")
        else:
            # From the parser: which command, and where to read more; else the message.
            message = f"{e.prog}: {e} (see '{e.prog} --help')" if e.usage else str(e)
            _log().error(
                "fatal_error",
                message=message,
                error_type=type(e).__name__,
                exit_code=int(e.exit_code),
            )
        return int(e.exit_code)
    except IntegritydError as e:
        _log().error(
            "fatal_error", message=str(e), error_type=type(e).__name__, exit_code=int(e.exit_code)
        )
        return int(e.exit_code)
    except Exception as e:  # a bug: still one line and a documented code, not a traceback
        _log().error(
            "internal_error",
            message=f"internal error: {e!r}",
            exit_code=int(Fatal.INTERNAL),
            exc_info=True,
        )
        return int(Fatal.INTERNAL)
    finally:
        if clean_up is not None:
            clean_up()
    return code


def entry() -> NoReturn:
    """The ``integrityd`` command (and ``python -m integrityd``): ``main``, then exit at once.

    By the time ``main`` returns, every process it started has been joined and every
    file and database closed. The interpreter's own teardown of its modules and objects
    would still take about 50 ms, a sixth of a small check, and do nothing that matters
    here, so only the standard streams are flushed.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or a closed stream
            stream.flush()
    os._exit(code)


def _log() -> Any:  # noqa: ANN401 - a structlog logger
    from integrityd import logsetup  # noqa: PLC0415 - see the module docstring

    return logsetup.get_logger()
