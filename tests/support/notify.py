"""A stand-in for systemd's notification socket: a unix datagram socket that records what the daemon sends."""

from __future__ import annotations

import socket
from pathlib import Path

WAIT = 60.0  # a safety net for a daemon that never notifies, not an assertion about speed


class NotifySocket:
    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self.messages: list[dict[str, str]] = []

    def pending(self) -> list[dict[str, str]]:
        """Every datagram already received, without waiting."""
        self._sock.setblocking(False)
        try:
            while True:
                self.messages.append(self._parse(self._sock.recv(65536)))
        except BlockingIOError:
            return self.messages
        finally:
            self._sock.setblocking(True)

    def wait_for(self, key: str, value: str | None = None) -> dict[str, str]:
        """Blocks until a datagram with key (=value) arrives; returns it."""
        self._sock.settimeout(WAIT)
        while True:
            message = self._parse(self._sock.recv(65536))
            self.messages.append(message)
            if key in message and (value is None or message[key] == value):
                return message

    @staticmethod
    def _parse(datagram: bytes) -> dict[str, str]:
        return dict(line.split("=", 1) for line in datagram.decode().splitlines() if "=" in line)

    def close(self) -> None:
        self._sock.close()
