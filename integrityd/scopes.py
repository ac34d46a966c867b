"""Which subtrees a run covers, with which root's rules: from the CLI, config and manifest.

Shared by the one-shot commands (``audit``) and the daemon, below both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat

from integrityd import logsetup
from integrityd.config import Config, RootConfig, Rule
from integrityd.errors import ManifestError, RootError, UsageError
from integrityd.manifest import ManifestStore
from integrityd.messages import Scope
from integrityd.paths import covers
from integrityd.policy import POLICIES, Command

log = logsetup.get_logger()

POLICY_OPTIONS = ("exclude", "check", "rules", "one_filesystem")
"""A root's options that decide what its baseline vouches for (``workers`` only paces)."""


def _stored_roots(manifest: bytes, command: Command) -> tuple[list[RootConfig], dict[bytes, int]]:
    try:
        with ManifestStore.open(manifest, "read") as store, store.guard():
            return store.roots(), store.root_devices()
    except ManifestError:
        if not POLICIES[command].needs_baseline:
            return [], {}  # a new manifest, or one init will report on properly
        raise


def _check_root(root: bytes, device: int | None) -> None:
    """Refuse a root that looks unmounted, rather than report every file as removed."""
    name = os.fsdecode(root)
    try:
        st = os.stat(root)
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(root) as entries:
                empty = next(entries, None) is None  # one entry is enough to know
        else:
            empty = False
    except OSError as e:
        raise RootError(f"root {name} cannot be read: {e.strerror}") from e
    if device and st.st_dev != device:
        msg = f"root {name} is on another filesystem than when it was baselined"
        raise RootError(
            f"{msg} (device {device:#x}, now {st.st_dev:#x}); is the right disk mounted?"
        )
    if empty:
        raise RootError(f"root {name} is empty but has a baseline; is the filesystem mounted?")


def resolve_scopes(
    command: Command, cfg: Config, manifest: bytes, paths: list[bytes]
) -> tuple[Scope, ...]:
    """Decide what to scan, and with which root's options, from the CLI, config and manifest."""
    stored, devices = _stored_roots(manifest, command)
    needs_baseline = POLICIES[command].needs_baseline
    known = [*cfg.roots, *sorted(stored, key=lambda r: len(r.path), reverse=True)]
    name = os.fsdecode(manifest)
    scopes: list[Scope] = []
    if paths:
        for p in paths:
            root = next((r for r in known if covers(r.path, p)), None)
            if root is None:
                if needs_baseline:
                    msg = f"{os.fsdecode(p)} has no baseline in {name}; run 'integrityd init' first"
                    raise ManifestError(msg)
                root = RootConfig(path=p)
            scopes.append(Scope(root, p))
    elif cfg.roots:
        for r in cfg.roots:
            if needs_baseline and not any(covers(s.path, r.path) for s in stored):
                msg = f"root {os.fsdecode(r.path)} from the config has no baseline in {name}"
                raise ManifestError(f"{msg}; run 'integrityd init' first")
            scopes.append(Scope(r, r.path))
    elif not needs_baseline:
        raise UsageError(f"{command} needs PATHs to baseline, or a config (-c) that lists roots")
    else:
        if not stored:
            raise ManifestError(
                f"manifest {name} holds no baseline yet; run 'integrityd init' first"
            )
        scopes = [Scope(r, r.path) for r in stored]
    return _distinct(command, _against_baseline(command, scopes, stored), devices)


def _against_baseline(
    command: Command, scopes: list[Scope], stored: list[RootConfig]
) -> list[Scope]:
    """A reader compares with the recorded options; a writer records the config's."""
    if POLICIES[command].writes:
        for s in scopes:
            _say_recorded(s.root, stored)
        return scopes
    return [_as_recorded(s, stored) for s in scopes]


def _differences(root: RootConfig, recorded: RootConfig) -> dict[str, tuple[object, object]]:
    """The policy options in which ``root`` differs from ``recorded``: name -> (was, now)."""
    return {
        name: (getattr(recorded, name), getattr(root, name))
        for name in POLICY_OPTIONS
        if getattr(root, name) != getattr(recorded, name)
    }


def _as_recorded(scope: Scope, stored: list[RootConfig]) -> Scope:
    """A reader's scope, with the options its baseline was recorded (and signed) with.

    The config is not signed: an intruder with root who adds ``exclude: [bin]`` to it,
    narrows ``check`` or adds a rule, would otherwise have check, verify and the daemon
    stop looking where he worked, with every run clean. What the baseline vouches for
    changes only through a writer (init, accept), which records the config's options
    (and needs the signing key where the baseline is signed). The config still picks
    which roots a run covers, and paces them (``workers``).
    """
    recorded = _recorded_for(scope.start, stored)
    if recorded is None:
        return scope  # nothing recorded to hold it to (a command that needs none)
    root = scope.root
    if root is recorded:
        return scope
    if differ := _differences(root, recorded):
        # A config root inside another baselined root is compared with that one's.
        where = (
            "its baseline was"
            if root.path == recorded.path
            else f"the baselined root {os.fsdecode(recorded.path)} around it was"
        )
        log.warning(
            "root_options_differ",
            message=f"root {os.fsdecode(root.path)}: the config's options differ from "
            f"those {where} recorded with ({_shown(differ)}); this run compares as "
            "recorded. To record the config's: integrityd accept --all -c CONFIG (with "
            "the signing key, if the baseline is signed)",
            root=os.fsdecode(root.path),
            recorded_root=os.fsdecode(recorded.path),
            options=sorted(differ),
        )
    return Scope(dataclasses.replace(recorded, workers=root.workers), scope.start)


def _recorded_for(start: bytes, stored: list[RootConfig]) -> RootConfig | None:
    """The recorded root whose baseline covers ``start`` (the innermost), if any."""
    covering = [r for r in stored if covers(r.path, start)]
    return max(covering, key=lambda r: len(r.path)) if covering else None


def pending_options(cfg: Config, manifest: bytes) -> list[str]:
    """For ``config check``: each config root whose options its baseline does not hold yet.

    One line per such root; none where the manifest cannot be read (it may not exist
    yet: the config is still valid).
    """
    try:
        stored, _ = _stored_roots(manifest, "check")
    except (ManifestError, OSError):
        return []
    lines = []
    for root in cfg.roots:
        recorded = _recorded_for(root.path, stored)
        if recorded is not None and (differ := _differences(root, recorded)):
            lines.append(
                f"root {os.fsdecode(root.path)}: {_shown(differ)}: not in its baseline yet; "
                "readers compare as recorded until an accept records them "
                "(integrityd accept --all -c CONFIG)"
            )
    return lines


def _say_recorded(root: RootConfig, stored: list[RootConfig]) -> None:
    """A writer records the config's options: where they change the baseline's, say so."""
    recorded = next((r for r in stored if r.path == root.path), None)
    if recorded is not None and (differ := _differences(root, recorded)):
        log.warning(
            "root_options_changed",
            message=f"root {os.fsdecode(root.path)}: this run records the config's options "
            f"in place of those the baseline was recorded with ({_shown(differ)})",
            root=os.fsdecode(root.path),
            options=sorted(differ),
        )


def _shown(differ: dict[str, tuple[object, object]]) -> str:
    """``exclude: [] -> ["bin"]``: each option as the config would write it, was -> now."""
    return "; ".join(f"{name}: {_json(was)} -> {_json(now)}" for name, (was, now) in differ.items())


def _json(value: object) -> str:
    if isinstance(value, tuple):
        value = [dataclasses.asdict(v) if isinstance(v, Rule) else v for v in value]
    return json.dumps(value)


def _distinct(
    command: Command, scopes: list[Scope], devices: dict[bytes, int]
) -> tuple[Scope, ...]:
    """Drop scopes nested in others (they would be scanned twice); check that each exists."""
    starts = [s.start for s in scopes]
    unique = {
        s.start: s for s in scopes if not any(o != s.start and covers(o, s.start) for o in starts)
    }
    for s in unique.values():
        if not os.path.lexists(s.start):
            raise RootError(f"{os.fsdecode(s.start)} does not exist (is the filesystem mounted?)")
        if POLICIES[command].checks_device and s.root.path in devices:
            _check_root(s.root.path, devices[s.root.path])
    return tuple(unique.values())
