"""A reload's plan, worked out without a process: which roots stay, come, go, and keep."""

from __future__ import annotations

from integrityd.config import Config, LogConfig, RootConfig
from integrityd.messages import Scope
from integrityd.reloadplan import plan_reload


def scope(path: bytes, **options: object) -> Scope:
    return Scope(RootConfig(path=path, **options), path)  # type: ignore[arg-type]


A, B, C = scope(b"/a"), scope(b"/b"), scope(b"/c")
F = frozenset[int]


def test_roots_keep_their_numbers_and_new_ones_come_after() -> None:
    """/a stays 0, /b (removed) keeps its number unused, /c is appended as 2."""
    plan = plan_reload((A, B), frozenset({0, 1}), Config(), Config(), (C, A))
    assert plan.scopes == (A, B, C)
    assert (plan.active, plan.added, plan.removed) == (F({0, 2}), F({2}), F({1}))


def test_a_root_whose_options_changed_is_a_new_scope() -> None:
    """The same path with other excludes is another scope: dropped and added, then scanned."""
    a2 = scope(b"/a", exclude=("*.tmp",))
    plan = plan_reload((A,), frozenset({0}), Config(), Config(), (a2,))
    assert (plan.scopes, plan.added, plan.removed) == ((A, a2), F({1}), F({0}))


def test_a_root_removed_earlier_comes_back_under_a_new_number() -> None:
    """Numbers are never reused: state indexed by an old number cannot leak into a new root."""
    plan = plan_reload((A, B), frozenset({0}), Config(), Config(), (A, B))
    assert (plan.scopes, plan.active, plan.added, plan.removed) == (
        (A, B, B),
        F({0, 2}),
        F({2}),
        F(),
    )


def test_settings_the_processes_were_made_with_wait_for_a_restart() -> None:
    """manifest, workers and chunk_size stay as they were; the rest (log, watch) applies."""
    old = Config(manifest=b"/m1", workers=2, chunk_size=1 << 16)
    new = Config(manifest=b"/m2", workers=4, chunk_size=1 << 16, log=LogConfig(level="debug"))
    plan = plan_reload((A,), frozenset({0}), old, new, (A,))
    assert plan.restart_needed == ("manifest", "workers")
    assert (plan.config.manifest, plan.config.workers, plan.config.log.level) == (
        b"/m1",
        2,
        "debug",
    )
    assert (plan.added, plan.removed) == (F(), F())
