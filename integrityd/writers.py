"""Who besides its owner may change a file integrityd trusts: the manifest, config, key.

A file that others may write, or that lies in a directory others may write (where they
may replace it, or make its name first: the sticky bit of /tmp stops only renaming), is
one an unprivileged user can point integrityd at something of his own with. Each caller
refuses such a file with its own error and exit code.

Group write permission is no one else's where the group is the owner's private group
(user-private groups: Debian and Ubuntu give every user a group of their own and the
umask 002, so a clone or an editor's file is mode 0664 or 0775): the group has no
members and no other user has it as primary group. That is Debian's rule for sshd's
StrictModes too.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat

from integrityd.errors import IntegritydError


def changeable_by_others(path: str | bytes) -> tuple[str, str] | None:
    """Why someone besides the owner of ``path`` may change it, and what to ``chmod go-w``.

    None if no one may. ``path`` itself is not followed if it is a symlink (the caller
    says what it thinks of one); a path that does not exist (yet) is judged by its
    directory alone.
    """
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None and not stat.S_ISLNK(st.st_mode) and _others_may_write(st):
        mode = stat.S_IMODE(st.st_mode)
        return f"may be written by others than its owner (mode {mode:04o})", os.fsdecode(path)
    directory = os.fsdecode(os.path.dirname(os.fsencode(path)) or b".")
    try:
        dst = os.stat(directory)
    except OSError:
        return None  # absent: whoever makes it makes it safe, or opening it says why
    if _others_may_write(dst):
        mode = stat.S_IMODE(dst.st_mode)
        return (
            f"is in {directory}, which others than its owner may write (mode {mode:04o})",
            directory,
        )
    return None


def refuse_if_changeable(
    path: str | bytes, what: str, harm: str, error: type[IntegritydError]
) -> None:
    """Raise ``error`` ("``what`` PATH REASON: ``harm``; chmod go-w ...") if others may."""
    if (found := changeable_by_others(path)) is not None:
        reason, fix = found
        raise error(f"{what} {os.fsdecode(path)} {reason}: {harm}; chmod go-w {fix}")


def _others_may_write(st: os.stat_result) -> bool:
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP) and not _private_group(st.st_uid, st.st_gid)


def _private_group(uid: int, gid: int) -> bool:
    """Whether ``gid`` is ``uid``'s own group: its primary, with no one else in it."""
    try:
        if pwd.getpwuid(uid).pw_gid != gid or grp.getgrgid(gid).gr_mem:
            return False
        return all(p.pw_uid == uid for p in pwd.getpwall() if p.pw_gid == gid)
    except KeyError:  # an id with no name: nothing shows who is in it
        return False
