"""The daemon's heartbeat: STATUS= lines, collector pings, and systemd's watchdog.

Every ``STATUS_S`` the daemon pings the collector and tells systemd what it is doing.
``WATCHDOG=1`` is sent only while the collector answers those pings: a pipeline stuck
anywhere (a collector stopped, a manifest that never unlocks) stops the pings, and
systemd restarts the service. A main loop that hangs stops them by itself.
"""

from __future__ import annotations

import time

from integrityd.messages import LiveStats, Ping
from integrityd.notify import Notifier
from integrityd.pipeline import CollectorHandle

TICK_S = 1.0  # the loop wakes at least this often, for timers and the watchdog
STATUS_S = 2.0  # STATUS= updates and collector pings


class Heartbeat:
    """When to ping and report, and whether the collector has answered recently enough."""

    def __init__(self, notifier: Notifier, handle: CollectorHandle, now: float) -> None:
        self.notifier = notifier
        self._handle = handle
        self.stats = LiveStats(0, 0)  # the collector's latest answer
        self._heard_at = now
        self._status_at = 0.0
        self._watchdog_at = 0.0

    def timeout(self, timeout: float) -> float:
        """``timeout`` cut so that the loop wakes in time for the next watchdog ping."""
        timeout = min(timeout, TICK_S)
        if self.notifier.watchdog_s is not None:
            timeout = min(timeout, self.notifier.watchdog_s)
        return timeout

    def due(self, now: float) -> bool:
        """Time for a status line and a ping (True once per period: it starts the period)."""
        interval = self.notifier.watchdog_s
        if now - self._status_at >= STATUS_S or (interval and now - self._status_at >= interval):
            self._status_at = now
            return True
        return False

    def beat(self, status: str) -> None:
        """Ping the collector (its answer reaches ``heard``) and tell systemd ``status``."""
        self._handle.send(Ping())
        self.notifier.send(STATUS=status)

    def heard(self) -> None:
        """The collector's control pipe is readable: its answer to a ping, else an error."""
        self.stats = self._handle.stats()  # anything but stats (a failure, EOF) raises
        self._heard_at = time.monotonic()

    def watchdog(self, now: float) -> None:
        """WATCHDOG=1 when due, only while the collector answers."""
        interval = self.notifier.watchdog_s
        if interval is None or now - self._watchdog_at < interval:
            return
        if now - self._heard_at <= 2 * max(interval, STATUS_S) + TICK_S:
            self.notifier.send(WATCHDOG=1)
            self._watchdog_at = now
