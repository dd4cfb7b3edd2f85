"""Logging set-up: text for terminals, JSON lines for journald / CloudWatch.

Records may carry structured fields (`extra={"event": "refresh", "role": ...}`); the JSON format emits them
as keys. Nothing logged here ever holds a key, a session token or an IMDSv2 token: the call sites pass
ARNs, paths, codes and times only, and botocore/urllib3 (which log request headers at DEBUG) are held at
WARNING whatever the level.
"""

from __future__ import annotations

import json
import logging
import sys
import time

FIELDS = ("event", "role", "outcome", "expires", "duration_s", "error_code", "remote", "method", "path", "status",
          "latency_ms", "route")
QUIET = ("botocore", "boto3", "urllib3", "s3transfer", "aiohttp")


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


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(NoLibraryTracebacks())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
