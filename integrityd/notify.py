"""The systemd notify protocol (sd_notify(3)): a few datagrams on a unix socket.

Without ``NOTIFY_SOCKET`` every call does nothing, so the daemon runs the same in a
terminal, under another supervisor, or in tests that bind a socket of their own.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from integrityd import logsetup

log = logsetup.get_logger()


class Notifier:
    """Sends ``READY=1``, ``STATUS=...``, ``WATCHDOG=1`` and friends to the service manager."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is an abstract socket: a leading NUL byte on the wire.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # Ping at half the timeout, as sd_watchdog_enabled(3) advises.
        self.watchdog_s: float | None = int(usec) / 2e6 if usec.isdigit() and mine else None
        self._warned = False

    def send(self, **fields: object) -> None:
        """One message: ``send(READY=1, STATUS="watching")``."""
        if self._sock is None:
            return
        data = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            # Never block: a manager that does not read (or a full queue) must not stall
            # the loop that does the work. A dropped STATUS is replaced two seconds later.
            self._sock.sendto(data, socket.MSG_DONTWAIT, self._address)
        except BlockingIOError:
            pass
        except OSError as e:
            if not self._warned:  # a vanished manager is worth one line, not one per ping
                log.warning("notify_failed", message=f"cannot reach NOTIFY_SOCKET: {e.strerror}")
                self._warned = True

    def reloading(self) -> None:
        """RELOADING=1 with the timestamp that Type=notify-reload expects."""
        self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def close(self) -> None:
        """Release the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
