"""The request ledger: what every endpoint answered, and to whom, written once per request.

The gate adds each request to one entry, keyed by (route label, status, uid, role). The metrics read the
entries when Prometheus scrapes (requests by route and status, latency by route, refusals by reason) and the
audit trail reads them each interval (who got which role's credentials, or was refused, how often, first and
last). One lookup and a few additions per request serve both: on a path that does little else, a separate
update for each reader cost more than the rest of the accounting.

The entries are never dropped (the metrics are cumulative). Their number is bounded by what a key can hold:
the routes' labels, the statuses they answer, the local uids and the configured roles.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

# The latency histogram's bucket bounds (seconds): Prometheus's `le` labels, the last bucket +Inf.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
FIRST_BUCKET = BUCKETS[0]
CONNECTION = None  # the status of an entry for connections refused before any request (no HTTP answer)

Label = tuple[str, str]  # (route, the reason it was refused or "")
Key = tuple[Label, int | None, int | None, str | None]  # label, status (or CONNECTION), uid (None: unknown), role


class Entry:
    """One key's requests: how many, their latency (a sum, and counts past the first bucket; almost every answer
    falls in the first one), and the times of the first and last that the audit trail has not written yet."""

    __slots__ = ("count", "first", "last", "reported", "seconds", "slow")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.slow = [0] * len(BUCKETS)  # slow[i]: answers in bucket i + 1 (the last one: over BUCKETS[-1])
        self.reported = 0  # how many of `count` the audit trail has written
        self.first: float | None = None  # Unix time of the first request not yet written (None: all written)
        self.last = 0.0

    def add(self, moment: float, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds
        if seconds > FIRST_BUCKET:
            self.slow[bisect_left(BUCKETS, seconds) - 1] += 1
        if self.first is None:
            self.first = moment
        self.last = moment

    def buckets(self) -> list[int]:
        """The count in each bucket, the first one included (for the histogram, not cumulative)."""
        return [self.count - sum(self.slow), *self.slow]


class Ledger:
    """The entries by key, and whom to tell of a new one."""

    def __init__(self) -> None:
        self.entries: dict[Key, Entry] = {}
        # Told of every new entry once its first request is added (the audit trail writes a first handout at once).
        self.on_new: Callable[[Key, Entry], None] = lambda key, entry: None

    def add(self, key: Key, moment: float, seconds: float) -> None:
        """Adds a request that ended at `moment` (Unix time) after `seconds`."""
        if (entry := self.entries.get(key)) is not None:
            entry.add(moment, seconds)
            return
        entry = self.entries[key] = Entry()  # the first request of its key
        entry.add(moment, seconds)
        self.on_new(key, entry)
