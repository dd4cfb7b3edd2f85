"""Logging set-up: text for terminals, JSON lines for journald / CloudWatch.

When stderr is the journal (systemd connected it and says so in JOURNAL_STREAM), each line starts with its
syslog priority as `<N>`, which journald reads (SyslogLevelPrefix=, on by default) and strips: so
`journalctl -p err` shows errors, in either format. Anywhere else the lines are unchanged.

Records may carry structured fields (`extra={"event": "refresh", "role": ...}`); the JSON format emits them
as keys. Nothing logged here ever holds a key, a session token or an IMDSv2 token: the call sites pass
ARNs, paths, codes and times only, and botocore/urllib3 (which log request headers at DEBUG) are held at
WARNING whatever the level.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TextIO

FIELDS = ("event", "role", "outcome", "expires", "duration_s", "error_code", "remote", "method", "path", "status",
          "latency_ms", "route", "uid", "user", "count", "first", "last")
QUIET = ("botocore", "boto3", "urllib3", "s3transfer", "aiohttp")
ACCESS = "metadata_proxy.access"  # the line per request (DEBUG)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        entry.update({name: getattr(record, name) for name in FIELDS if hasattr(record, name)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class NoLibraryTracebacks(logging.Filter):
    """The libraries' own warnings keep their one line; their tracebacks (botocore logs a 15-line one when a
    source credential cannot be refreshed) never reach the user. Our own failures are already one line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.split(".", 1)[0] in QUIET:
            record.exc_info, record.exc_text = None, None
        return True


class Throttle:
    """At most one line per kind of event per period; how many were held back is told in the next one."""

    def __init__(self, period: float = 60.0, now: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._now = now
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def admit(self, kind: Hashable) -> int | None:
        """None to hold this line back; else the number held back since the last one written."""
        moment = self._now()
        last = self._last.get(kind)
        if last is not None and moment - last < self.period:
            self._held[kind] = self._held.get(kind, 0) + 1
            return None
        if last is None and len(self._last) >= 256:  # kinds are a few fixed messages; stay bounded whatever comes
            self._last.clear()
        self._last[kind] = moment
        return self._held.pop(kind, 0)


class ThrottleFilter(logging.Filter):
    """A Throttle for records of other libraries that repeat under load (asyncio's accept errors, aiohttp's
    server errors): one per message and exception type per period, the first with its traceback."""

    def __init__(self, period: float = 60.0, now: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._throttle = Throttle(period, now)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        # The message's first line: asyncio's reports of a failed task go on with the task's own description.
        held = self._throttle.admit((record.name, str(record.msg).split("\n", 1)[0][:80], type(error).__name__))
        if held is None:
            return False
        if held:
            record.msg = f"{record.msg} ({held} more like this held back)"
        return True


def is_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """systemd sets JOURNAL_STREAM to the device:inode of the stream it connected; only a match means this
    stream is that one (a wrapper may have redirected stderr, and the variable is inherited by children)."""
    try:
        device, inode = (int(part) for part in environ.get("JOURNAL_STREAM", "").split(":"))
        status = os.fstat(stream.fileno())
    except (ValueError, OSError):  # unset or malformed, or a stream without a file descriptor
        return False
    return (status.st_dev, status.st_ino) == (device, inode)


def syslog_priority(levelno: int) -> int:
    """Python's level -> syslog's: CRITICAL 2 (crit), ERROR 3 (err), WARNING 4 (warning), INFO 6, DEBUG 7."""
    for threshold, priority in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6)):
        if levelno >= threshold:
            return priority
    return 7


class JournalPrefix(logging.Formatter):
    """Puts `<N>` before every line of another formatter's output (a traceback is several journal entries)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def print_error(line: str) -> None:
    """A command's one-line error on stderr, at priority err when that is the journal."""
    prefix = f"<{syslog_priority(logging.ERROR)}>" if is_journal(sys.stderr) else ""
    print(prefix + line, file=sys.stderr, flush=True)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(NoLibraryTracebacks())
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        formatter.converter = time.gmtime
    handler.setFormatter(JournalPrefix(formatter) if is_journal(sys.stderr) else formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
    # Set on the access logger itself too: the gate reads its own level, an attribute, before asking logging
    # whether a request line is wanted (a call on every request).
    logging.getLogger(ACCESS).setLevel(level.upper())
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
