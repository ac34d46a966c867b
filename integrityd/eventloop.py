"""A small event loop: callbacks on readable descriptors, and a wake-up that is safe anywhere.

The daemon waits on many things at once: each worker's pipe and process sentinel, the
collector's control pipe, and wake-ups from signal handlers and from watchdog's threads
(a change settled, the kernel's queue overflowed, a thread died). Every one of them is a
descriptor in one epoll set here, and each has its callback. The pool registers its
workers in the loop it is given, so the daemon owns the loop and the pool only uses it.

asyncio would do the same with more machinery than the one process loop needs, and its
loop would have to own the child processes' sentinels too.
"""

from __future__ import annotations

import contextlib
import os
import selectors
from collections.abc import Callable
from typing import Any

Callback = Callable[[], None]


class Loop:
    """A selector whose keys carry callbacks; ``wait`` runs those of the ready descriptors."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._drain)

    def add_reader(self, fileobj: Any, callback: Callback) -> None:  # noqa: ANN401 - a descriptor or an object with fileno()
        """Call ``callback`` whenever ``fileobj`` is readable."""
        self._selector.register(fileobj, selectors.EVENT_READ, callback)

    def remove_reader(self, fileobj: Any) -> None:  # noqa: ANN401
        """Stop watching ``fileobj`` (before it is closed: epoll forgets closed ones itself)."""
        self._selector.unregister(fileobj)

    def wait(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` s (None: for ever) for a descriptor; run the callbacks.

        A callback may remove readers that are ready in the same round: each callback
        checks that what it serves still exists.
        """
        for key, _ in self._selector.select(timeout):
            key.data()

    def wake(self) -> None:
        """Make the current or next ``wait`` return: from a signal handler or another thread."""
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self._wake_w, b"\0")

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def close(self) -> None:
        """Release the selector and the wake-up pipe; idempotent."""
        if self._wake_r < 0:
            return
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = -1
