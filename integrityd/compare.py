"""Classify one difference between a baseline entry and what is on disk now (pure)."""

from __future__ import annotations

from integrityd.messages import Action, FileState, Finding

# Attribute name in the config → (FileState field, name in events, as in ECS ``file.*``).
_METADATA = (
    ("type", "type", "type"),
    ("mode", "mode", "mode"),
    ("uid", "uid", "uid"),
    ("gid", "gid", "gid"),
    ("target", "target", "target_path"),
    ("rdev", "rdev", "rdev"),
    ("caps", "caps", "capabilities"),
    ("acl", "acl", "acl"),
    ("selinux", "selinux", "selinux"),
    ("xattrs", "xattrs", "xattrs"),
    ("flags", "flags", "attributes"),
    ("nlink", "nlink", "nlink"),
    ("inode", "inode", "inode"),
    ("ctime", "ctime_ns", "ctime"),
    ("mtime", "mtime_ns", "mtime"),
)
# Fields a baseline may lack (None: made before they were recorded, or not read): never
# compared while either side lacks them.
_OPTIONAL = frozenset({"nlink", "rdev", "flags", "caps", "acl", "selinux", "xattrs"})


def classify(
    old: FileState | None, new: FileState, attrs: frozenset[str], prefix: bytes | None = None
) -> Finding | None:
    """Return the finding for ``new`` against its baseline ``old``, or None if it matches.

    Content that changed while size and mtime stayed the same is ``corrupted`` (bit rot
    or an edit that covered its tracks); content that changed with an mtime older than
    the baseline's is ``backdated`` (an old copy restored, or a faked timestamp); content
    that changed otherwise is ``modified``. ``prefix``: for ``grow``, the SHA-256 of the
    first ``old.size`` bytes of ``new`` (None: not read).
    """
    if new.error_type is not None:
        return _unread(old, new, attrs)
    if old is None:
        return Finding("added", new.path, None, new)
    if "grow" in attrs and old.type == new.type == "file":
        return _grow(old, new, attrs, prefix)
    changes: list[str] = []
    content = (
        "content" in attrs
        and old.type == new.type == "file"
        and (old.sha256 != new.sha256 or old.size != new.size)
    )
    if content:
        changes.append("hash.sha256")
        if old.size != new.size:
            changes.append("size")
        if old.mtime_ns != new.mtime_ns:
            changes.append("mtime")
    changes += _metadata_changes(old, new, attrs, changes)
    if not changes:
        return None
    action = _content_action(old, new) if content else "metadata"
    return Finding(action, new.path, old, new, tuple(changes))


def _grow(
    old: FileState, new: FileState, attrs: frozenset[str], prefix: bytes | None
) -> Finding | None:
    """A file that may only grow: the first ``old.size`` bytes must still be the baseline.

    Grown alone is ``grown`` (not a difference); grown with other changes is
    ``metadata``, with the growth in ``changes``; anything else is ``modified``, with
    the reason: truncated, or content before the old end rewritten.
    """
    same = old.size == new.size and old.sha256 == new.sha256
    if new.size < old.size:
        reason: str | None = f"truncated from {old.size:,} to {new.size:,} bytes"
    elif same or prefix == old.sha256:
        reason = None
    else:
        reason = f"content before the old end ({old.size:,} bytes) was rewritten"
    grew = [] if same else ["hash.sha256", "size"]
    changes = _metadata_changes(old, new, attrs, grew)
    if reason is not None:
        return Finding("modified", new.path, old, new, (*grew, *changes), reason=reason)
    if changes:
        return Finding("metadata", new.path, old, new, (*changes, *grew))
    return Finding("grown", new.path, old, new, tuple(grew)) if grew else None


def _metadata_changes(
    old: FileState, new: FileState, attrs: frozenset[str], known: list[str]
) -> list[str]:
    """The checked metadata fields (event names) that differ, less those in ``known``."""
    out = []
    for attr, field, name in _METADATA:
        if attr not in attrs or name in known:
            continue
        if field == "nlink" and new.type == "dir":
            continue  # 2 + its subdirectories: the listing reports those already
        was, now = getattr(old, field), getattr(new, field)
        if was != now and not (field in _OPTIONAL and (was is None or now is None)):
            out.append(name)
    return out


def _content_action(old: FileState, new: FileState) -> Action:
    if old.size == new.size and old.mtime_ns == new.mtime_ns:
        return "corrupted"
    if new.mtime_ns < old.mtime_ns:
        return "backdated"
    return "modified"


def _unread(old: FileState | None, new: FileState, attrs: frozenset[str]) -> Finding:
    """A file whose content could not be read, but whose lstat() may still show changes.

    ``metadata`` (``modified`` if the size changed: that alone proves a new content)
    with what changed; ``unreadable`` if nothing visible changed, or nothing is known.
    Either way the event carries the error: the content was not verified.
    """
    if old is None or new.type in ("unknown", "missing"):
        return Finding("unreadable", new.path, old, new)
    sized = "content" in attrs and old.type == new.type == "file" and old.size != new.size
    changes = ["size"] if sized else []
    changes += _metadata_changes(old, new, attrs, changes)
    if not changes:
        return Finding("unreadable", new.path, old, new)
    return Finding("modified" if sized else "metadata", new.path, old, new, tuple(changes))
