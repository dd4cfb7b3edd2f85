"""systemd's notification protocol (sd_notify), spoken with the standard library: no libsystemd.

READY=1 is sent only once credentials are cached, so "started" means "serving" for units ordered after us;
RELOADING=1 / READY=1 bracket a reload, STOPPING=1 starts shutdown, STATUS= says what is served. WATCHDOG=1
pings come from a task on the event loop, so they stop when the loop stalls and systemd restarts us.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("metadata_proxy.notify")

HEARTBEAT = 1.0  # seconds between event-loop heartbeats (and the fastest watchdog ping)


class Notifier:
    """Sends datagrams to $NOTIFY_SOCKET; without it (not under systemd) every call is a no-op."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address  # abstract namespace
        self.watchdog_interval: float | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2  # ping at half the timeout, as sd_watchdog_enabled() advises
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, *fields: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as error:  # systemd gone, or a socket we may not write: never worth dying for
            log.debug("sd_notify to %s failed: %s", self._address, error)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()


async def heartbeat(notifier: Notifier, beat: Callable[[], None]) -> None:
    """Proves the event loop turns: beat() records it for /healthz, and systemd's watchdog gets its pings here."""
    interval = min(HEARTBEAT, notifier.watchdog_interval or HEARTBEAT)
    while True:
        beat()
        if notifier.watchdog_interval:
            notifier.send("WATCHDOG=1")
        await asyncio.sleep(interval)
