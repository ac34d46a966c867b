"""List what lies under a scope, iteratively, without following symlinks.

The walker yields work items for the hash workers and ``DirUnreadable`` for directories
it cannot list, so that nothing below them is mistaken for removed. It stays on the
root's filesystem unless the root says ``one_filesystem: false``: a mount point is
recorded as a directory but not entered.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from integrityd.events import HINT_FILE, HINT_OTHER, DirUnreadable, Scope, Work
from integrityd.exclude import Excluder


def _describe(e: OSError) -> str:
    return f"{type(e).__name__}: {e.strerror or e}"


def relative(root: bytes, path: bytes) -> bytes:
    """``path`` relative to ``root``, without a leading slash; root itself is ``b""``."""
    return path[len(root.rstrip(b"/")) + 1 :]


def walk(scope: Scope, skip: frozenset[bytes]) -> Iterator[Work | DirUnreadable]:
    """Yield every entry of the scope; ``scope.start`` must exist (lstat raises otherwise)."""
    top = os.lstat(scope.start)
    if not stat.S_ISDIR(top.st_mode):
        yield (scope.start, HINT_FILE if stat.S_ISREG(top.st_mode) else HINT_OTHER, top.st_size)
        return
    yield (scope.start, HINT_OTHER, 0)
    excluder = Excluder(scope.root.exclude)
    device = top.st_dev if scope.root.one_filesystem else None
    stack = [scope.start]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                yield from _entries(
                    scope.root.path, directory, entries, excluder, skip, device, stack
                )
        except FileNotFoundError:
            continue
        except OSError as e:
            yield DirUnreadable(directory, _describe(e))


def _entries(  # noqa: PLR0917 - private helper of walk(), called once
    root: bytes,
    directory: bytes,
    entries: Iterator[os.DirEntry[bytes]],
    excluder: Excluder,
    skip: frozenset[bytes],
    device: int | None,
    stack: list[bytes],
) -> Iterator[Work]:
    """Work items for one directory's entries; subdirectories to enter go onto ``stack``."""
    prefix = directory.rstrip(b"/") + b"/"
    for entry in entries:
        path = prefix + entry.name
        if path in skip:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # gone already; if it was baselined, it is reported removed
        except OSError:
            yield (path, HINT_FILE, 0)  # the worker will report why
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        if excluder and excluder.matches(relative(root, path), is_dir):
            continue
        if is_dir:
            yield (path, HINT_OTHER, 0)
            if device is None or st.st_dev == device:
                stack.append(path)
        elif stat.S_ISREG(st.st_mode):
            yield (path, HINT_FILE, st.st_size)
        else:
            yield (path, HINT_OTHER, 0)
