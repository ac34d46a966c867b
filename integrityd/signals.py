"""What a process of ours does with SIGINT and SIGTERM once main owns its shutdown."""

from __future__ import annotations

import signal
import threading


def ignore_stop_signals() -> None:
    """Ignore SIGINT and SIGTERM: main stops this process in order, or kills it.

    A signal sent to the whole process group (Ctrl-C, KillMode=control-group,
    timeout(1), kill -- -PGID) must not end a worker or the collector mid-task, nor main
    once its collector is committing. Only the main thread may set handlers: elsewhere
    (main called from another thread, as in some tests) this does nothing.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
