"""Wall-clock time for the refresher: STS expirations are wall-clock, and tests drive a fake one by hand."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class SystemClock:
    # Sleep in slices and re-read the wall clock: after a laptop's suspend, or an NTP step, the monotonic clock
    # behind asyncio.sleep has not moved, and one long sleep would wake up long after the credentials expired.
    SLICE = 30.0

    # time.time itself, not a method wrapping it: the request path reads the clock (token and credential
    # expiry), and a direct C call is the cheapest read there is.
    time = staticmethod(time.time)

    async def sleep_until(self, deadline: float) -> None:
        while (remaining := deadline - time.time()) > 0:
            await asyncio.sleep(min(remaining, self.SLICE))
