"""Small shared helpers for tests: a free loopback port, and the IMDS timestamp format."""

from __future__ import annotations

import calendar
import socket
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_time(text: str) -> float:
    """2026-01-01T00:00:00Z -> POSIX seconds."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))
