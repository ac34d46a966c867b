"""What a reload (SIGHUP) of the daemon changes: worked out from two configs, without I/O.

Scopes are numbered for the daemon's lifetime: every process indexes its per-root state
(excluders, pending paths, watches) by that number, so a root's number never changes
and a removed root's number is not reused. A reload keeps the roots it still has,
appends the new ones, and lists what it drops. The settings the running processes were
started with (the manifest, the number of workers, the chunk size) stay until a restart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from integrityd.config import Config
from integrityd.messages import Scope

RESTART_ONLY = ("manifest", "workers", "chunk_size")
"""Settings a reload leaves as they were: the processes were made with them."""


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """The daemon after a reload, and the steps that take it there."""

    scopes: tuple[Scope, ...]  # every scope the daemon has numbered, old ones first
    active: frozenset[int]  # the ones watched from now on
    added: frozenset[int]  # to watch and scan
    removed: frozenset[int]  # to forget
    config: Config  # the new config, with the RESTART_ONLY settings as they were
    restart_needed: tuple[str, ...]  # RESTART_ONLY settings the new config changes


def plan_reload(
    scopes: tuple[Scope, ...],
    active: frozenset[int],
    old: Config,
    new: Config,
    wanted: tuple[Scope, ...],
) -> ReloadPlan:
    """The plan from ``scopes`` (``active`` of them watched) under ``old``, to ``new``.

    ``wanted``: the scopes ``new`` resolves to (distinct, as resolve_scopes makes them).
    """
    known = {scopes[i]: i for i in active}
    numbered = list(scopes)
    keep: set[int] = set()
    added: set[int] = set()
    for s in wanted:
        if s in known:
            keep.add(known[s])
        else:
            added.add(len(numbered))
            numbered.append(s)
    kept = {k: getattr(old, k) for k in RESTART_ONLY}
    return ReloadPlan(
        scopes=tuple(numbered),
        active=frozenset(keep | added),
        added=frozenset(added),
        removed=frozenset(active - keep),
        config=dataclasses.replace(new, **kept),
        restart_needed=tuple(k for k in RESTART_ONLY if getattr(new, k) != kept[k]),
    )
