"""The audit trail: which local user got which role's credentials or tokens, or was refused, and how often.

A line per request would cost more than the request and let one client in a loop flood the journal, so
requests are counted per (uid, role, route kind) and written as one INFO record per kind per interval, with
the count and the first and last time. The first credentials a uid gets for a role are written at once, so
a new reader of a role shows up without waiting for the interval. Records hold uids, user names, role ARNs,
route kinds, counts and times: never a header, a token or a key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from metadata_proxy.model import format_time
from metadata_proxy.peercred import describe, user_name

audit_log = logging.getLogger("metadata_proxy.audit")

IMDS_CREDENTIALS = "imds-credentials"
CONTAINER_CREDENTIALS = "container-credentials"
TOKEN = "token"
REFUSED = "refused"
HANDOUTS = frozenset({IMDS_CREDENTIALS, CONTAINER_CREDENTIALS})
DEFAULT_INTERVAL = 60.0
MAX_FIRSTS = 4096  # (uid, role) pairs remembered as having had credentials; past that none is "first" again


@dataclass(slots=True)
class Tally:
    count: int
    first: float
    last: float


Key = tuple[int | None, str, str]  # uid (None: undeterminable), role ARN, route kind


class AuditTrail:
    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._pending: dict[Key, Tally] = {}
        self._handed_out: set[tuple[int | None, str]] = set()

    def record(self, uid: int | None, role: str, route: str) -> None:
        key = (uid, role, route)
        tally = self._pending.get(key)
        if tally is not None:  # the common case, on the request path: count it
            tally.count += 1
            tally.last = self._now()
            return
        moment = self._now()
        tally = Tally(1, moment, moment)
        if route in HANDOUTS and (uid, role) not in self._handed_out and len(self._handed_out) < MAX_FIRSTS:
            self._handed_out.add((uid, role))  # the first credentials this uid got for this role: said at once
            _write(key, tally)
        else:
            self._pending[key] = tally

    def flush(self) -> None:
        """Writes every pending record (the timer calls this each interval, and the listener when it closes)."""
        pending, self._pending = self._pending, {}
        for key, tally in pending.items():
            _write(key, tally)

    async def run(self, interval: Callable[[], float],
                  sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        """Flushes every interval() seconds until cancelled (the interval is read each time: a reload may change it)."""
        while True:
            await sleep(interval())
            self.flush()


def _write(key: Key, tally: Tally) -> None:
    uid, role, route = key
    user = "?" if uid is None else user_name(uid)
    first, last = format_time(tally.first), format_time(tally.last)
    audit_log.info("audit: %s %s role %s, %d time%s, first %s, last %s", describe(uid), route, role, tally.count,
                   "" if tally.count == 1 else "s", first, last,
                   extra={"event": "audit", "uid": uid, "user": user, "role": role, "route": route,
                          "count": tally.count, "first": first, "last": last})
