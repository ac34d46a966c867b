"""The change log: one entry per init, accept, import and key change, and how it is shown.

The entries are written by ``ManifestStore.reseal`` in the writer's transaction and
chained and signed there (seal.py); this module says what an entry holds, and renders
the log for ``integrityd log``: newest first, like ``git log``, or as ECS events.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterable
from typing import Any

from integrityd.shown import visible

ACCEPTED_LISTED = 100  # paths an entry names; beyond that it counts them
_CHANGE_FIELDS = (
    "paths", "counts", "accepted", "accepted_total", "baseline_sha256", "key_id", "prev",
    "old_key_id", "new_key_id",
)  # fmt: skip


def author() -> dict[str, Any]:
    """Who runs this command: uid and name, the login uid, and sudo's user.

    The login uid (``/proc/self/loginuid``, set by PAM at login and kept across su and
    sudo) names the person behind a root shell; 4294967295 means none was set.
    """
    uid = os.getuid()
    try:
        name: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    try:
        with open("/proc/self/loginuid") as f:
            login: int | None = int(f.read().strip())
    except (OSError, ValueError):
        login = None
    if login == 0xFFFFFFFF:
        login = None
    return {
        "id": str(uid),
        "name": name,
        "login_id": None if login is None else str(login),
        "sudo_user": os.environ.get("SUDO_USER"),
    }


def entry(
    action: str,
    argv: Iterable[str],
    paths: Iterable[bytes],
    counts: dict[str, int],
    accepted: list[tuple[bytes, str]] | None = None,
    **extra: Any,  # noqa: ANN401 - more fields of a key change
) -> dict[str, Any]:
    """The fields of one log entry (``reseal`` adds sequence, time, digests and key)."""
    listed = []
    for path, data in (accepted or [])[:ACCEPTED_LISTED]:
        try:
            what = json.loads(data)["event"]["action"]
        except (ValueError, KeyError, TypeError):
            what = None
        listed.append({"path": os.fsdecode(path), "action": what})
    total = sum(n for k, n in counts.items() if k != "unreadable")
    return {
        "action": action,
        "argv": list(argv),
        "user": author(),
        "paths": [os.fsdecode(p) for p in paths],
        "counts": dict(sorted(counts.items())),
        "accepted": listed,
        "accepted_total": total,
        **extra,
    }


def text(entries: list[dict[str, Any]]) -> str:
    """The log for a terminal, newest first."""
    out = []
    for e in entries:
        user = e.get("user") or {}
        who = user.get("name") or f"uid {user.get('id')}"
        if user.get("sudo_user"):
            who += f" (sudo from {user['sudo_user']})"
        elif user.get("login_id") not in (None, user.get("id")):
            who += f" (login uid {user['login_id']})"
        key = e.get("key_id") or "unsigned"
        out.append(f"change {e['seq']}  {e['action']}  {e['time']}  by {who}  key {key}")
        out.append(f"    command:  integrityd {' '.join(e.get('argv') or [])}".rstrip())
        if e.get("paths"):
            out.append(f"    paths:    {', '.join(e['paths'])}")
        counts = ", ".join(f"{k} {n}" for k, n in (e.get("counts") or {}).items() if n)
        if counts:
            out.append(f"    counts:   {counts}")
        for a in e.get("accepted") or []:
            out.append(f"    {a.get('action') or '?':<10}{a['path']}")
        more = int(e.get("accepted_total") or 0) - len(e.get("accepted") or [])
        if more > 0:
            out.append(f"    ... and {more} more")
        if e["action"] == "key-change":
            out.append(f"    key:      {e.get('old_key_id')} -> {e.get('new_key_id')}")
        out.append(f"    baseline: sha256 {e['baseline_sha256']}")
        out.append("")
    # User names, SUDO_USER, command lines and paths are anyone's bytes.
    return "\n".join(visible(line) for line in out)


def ecs(e: dict[str, Any], host: dict[str, Any] | None = None) -> dict[str, Any]:
    """One entry as an ECS event (``event.action``: the command)."""
    user = e.get("user") or {}
    return {
        "@timestamp": e["time"],
        **({"host": host} if host else {}),
        "event": {
            "kind": "event",
            "module": "integrityd",
            "dataset": "integrityd.log",
            "category": ["configuration"],
            "type": ["change"],
            "action": e["action"],
            "sequence": e["seq"],
        },
        "user": {
            "id": user.get("id"),
            "name": user.get("name"),
            # The login uid under Auditbeat's name for it (auditd's "auid").
            **({"audit": {"id": user["login_id"]}} if user.get("login_id") else {}),
        },
        "process": {"args": ["integrityd", *(e.get("argv") or [])]},
        "integrityd": {
            "change": {k: e[k] for k in _CHANGE_FIELDS if k in e},
            "sudo_user": user.get("sudo_user"),
        },
    }
