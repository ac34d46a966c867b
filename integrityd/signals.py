"""How a child process of ours starts: its name, and SIGINT and SIGTERM left to main."""

from __future__ import annotations

import signal
import threading


def name_process(name: str) -> None:
    """Name this process (its ``comm``, what ps, top and pgrep show): 15 bytes at most.

    A forked worker and the collector otherwise show as ``python3`` or as the forkserver's
    long command line: an operator (or a test) that must find the collector, or kill a
    worker and not the process server, could not tell them apart.
    """
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass  # no /proc: the name is only a help


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
