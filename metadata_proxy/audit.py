"""The audit trail: which local user got which role's credentials or tokens, or was refused, and how often.

A line per request would cost more than the request and let one client in a loop flood the journal, so
requests are counted in the ledger (ledger.py) and written as one INFO record per (uid, role, route kind) per
interval, with the count and the first and last time. The first credentials a uid gets for a role are written
at once, so a new reader of a role shows up without waiting for the interval. Records hold uids, user names,
role ARNs, route kinds, counts and times: never a header, a token or a key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from metadata_proxy.ledger import Entry, Key, Ledger
from metadata_proxy.model import format_time
from metadata_proxy.peercred import describe, user_name

audit_log = logging.getLogger("metadata_proxy.audit")

IMDS_CREDENTIALS = "imds-credentials"
CONTAINER_CREDENTIALS = "container-credentials"
TOKEN = "token"
REFUSED = "refused"
HANDOUTS = frozenset({IMDS_CREDENTIALS, CONTAINER_CREDENTIALS})
# The routes whose 200 answers are audited, and as what; every refusal is audited as REFUSED.
AUDITED = {"credentials": IMDS_CREDENTIALS, "credentials-extended": IMDS_CREDENTIALS,
           "container": CONTAINER_CREDENTIALS, "token": TOKEN}
MAX_FIRSTS = 4096  # (uid, role) pairs remembered as having had credentials; past that none is "first" again


def kind(key: Key) -> str | None:
    """What a ledger entry is to the audit trail (None: not audited, like metadata and a request for no role)."""
    (route, reason), status, _uid, role = key
    if role is None:
        return None
    return REFUSED if reason else AUDITED.get(route) if status == 200 else None


@dataclass(slots=True)
class Record:
    count: int
    first: float
    last: float


class AuditTrail:
    """Reads the ledger: each interval, one record per (uid, role, kind) with what is new since the last one."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._handed_out: set[tuple[int | None, str]] = set()
        ledger.on_new = self._new

    def _new(self, key: Key, entry: Entry) -> None:
        """The first credentials a uid gets for a role are written at once."""
        what = kind(key)
        uid, role = key[2], key[3]
        if what in HANDOUTS and (uid, role) not in self._handed_out and len(self._handed_out) < MAX_FIRSTS:
            assert role is not None and entry.first is not None  # a handout names its role; its request is new
            self._handed_out.add((uid, role))
            _write(uid, role, what, Record(entry.count, entry.first, entry.last))  # (it holds this request only)
            entry.reported, entry.first = entry.count, None

    def flush(self) -> None:
        """Writes what the ledger holds that is not written yet (the timer calls this each interval, and the
        daemon when it stops)."""
        pending: dict[tuple[int | None, str, str], Record] = {}
        for key, entry in self._ledger.entries.items():
            if entry.first is None or (what := kind(key)) is None:
                continue
            new = entry.count - entry.reported
            entry.reported = entry.count
            first, entry.first = entry.first, None
            uid, role = key[2], key[3]
            assert role is not None  # kind() said it is audited
            if (record := pending.get(grouped := (uid, role, what))) is None:
                pending[grouped] = Record(new, first, entry.last)
            else:  # several entries make one record: the statuses and reasons of a refusal, both IMDS documents
                record.count += new
                record.first, record.last = min(record.first, first), max(record.last, entry.last)
        for (uid, role, what), record in pending.items():
            _write(uid, role, what, record)

    async def run(self, interval: Callable[[], float],
                  sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        """Flushes every interval() seconds until cancelled (the interval is read each time: a reload may change it)."""
        while True:
            await sleep(interval())
            self.flush()


def _write(uid: int | None, role: str, route: str, record: Record) -> None:
    user = "?" if uid is None else user_name(uid)
    first, last = format_time(record.first), format_time(record.last)
    audit_log.info("audit: %s %s role %s, %d time%s, first %s, last %s", describe(uid), route, role, record.count,
                   "" if record.count == 1 else "s", first, last,
                   extra={"event": "audit", "uid": uid, "user": user, "role": role, "route": route,
                          "count": record.count, "first": first, "last": last})
