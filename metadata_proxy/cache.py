"""The credential cache and the background refresher that alone fills it.

Flow: STS -> Refresher -> CredentialCache. Requests only ever call CredentialCache.get(), which reads memory.

- One refresher task per key, owned by the daemon: that is the single flight. No client request starts,
  joins or can cancel an AssumeRole (peers.md: kiam's shared call died with its first caller's context).
- Refresh ahead of expiry, jittered, so that while STS is healthy every credential served has at least
  `floor` seconds left (1800 s, or half a shorter session), and a 3600 s session is renewed at most 3 times
  an hour (peers.md "near-expiry thrash"; contract §6).
- On failure: capped exponential backoff with jitter; the previous credentials stay served while valid.
- Entries leave the cache `EXPIRY_MARGIN` seconds before their real expiry (a cachetools TLRUCache whose timer
  is the injected clock), so an expired or nearly expired credential cannot be read at all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from cachetools import TLRUCache

from metadata_proxy.credentials import Credentials, RoleSpec, StsError, format_time

log = logging.getLogger("metadata_proxy.refresh")

EXPIRY_MARGIN = 60.0  # never hand out credentials that could expire while the client is still using them
FLOOR = 1800.0  # served credentials keep at least this long (botocore extends anything under ~1500 s)


class Clock(Protocol):
    """Wall-clock time (STS expirations are wall-clock) and a sleep that tests can drive by hand."""

    def time(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class SystemClock:
    # Sleep in slices and re-read the wall clock: after a laptop's suspend, or an NTP step, the monotonic clock
    # behind asyncio.sleep has not moved, and one long sleep would wake up long after the credentials expired.
    SLICE = 30.0

    def time(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        while (remaining := deadline - time.time()) > 0:
            await asyncio.sleep(min(remaining, self.SLICE))


@dataclass(frozen=True)
class RefreshPolicy:
    floor: float = FLOOR
    backoff_base: float = 1.0
    backoff_cap: float = 60.0

    def floor_for(self, lifetime: float) -> float:
        return min(self.floor, lifetime / 2)

    def refresh_at(self, creds: Credentials, rng: random.Random) -> float:
        """Renew at 70-85% of the time the credentials spend above the floor.

        For a 3600 s session: between 1260 s and 1530 s after issue, so at most 2.9 calls an hour, and 270-540 s
        of retries are possible before the served remaining time would dip under the 1800 s floor.
        """
        window = creds.lifetime - self.floor_for(creds.lifetime)
        return creds.obtained_at + window * rng.uniform(0.70, 0.85)

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Capped exponential, with 'equal jitter' so that retries neither synchronise nor collapse to zero."""
        step = min(self.backoff_cap, self.backoff_base * 2 ** min(failures - 1, 30))
        return step / 2 + rng.uniform(0, step / 2)


class CredentialCache:
    """Current credentials per RoleSpec. An entry is unreadable from EXPIRY_MARGIN seconds before expiry."""

    def __init__(self, clock: Clock, maxsize: int = 1024) -> None:
        self._store: TLRUCache[RoleSpec, Credentials] = TLRUCache(
            maxsize, ttu=lambda _key, creds, _now: self.usable_until(creds), timer=clock.time)
        self.generation = 0  # bumped by every change, so readers may memoise what they rendered from it

    @staticmethod
    def usable_until(creds: Credentials) -> float:
        return creds.expiration - EXPIRY_MARGIN

    def get(self, spec: RoleSpec) -> Credentials | None:
        return self._store.get(spec)

    def put(self, spec: RoleSpec, creds: Credentials) -> None:
        self._store[spec] = creds
        self.generation += 1

    def discard(self, spec: RoleSpec) -> None:
        self._store.pop(spec, None)
        self.generation += 1


@dataclass
class RoleState:
    """What the refresher knows about one key; read by the routes for the error document and by logs."""

    spec: RoleSpec
    attempts: int = 0
    failures_in_a_row: int = 0
    last_error: StsError | None = None
    last_attempt: float | None = None
    last_success: float | None = None
    next_attempt: float | None = None
    fatal: StsError | None = None  # a permanent error before the first success: the daemon cannot start

    @property
    def ready(self) -> bool:
        return self.last_success is not None


Assume = Callable[[RoleSpec], Awaitable[Credentials]]
# Called after every AssumeRole attempt with the key's state and how long the call took (seconds).
Outcome = Callable[[RoleState, float], None]


class Refresher:
    """Owns every AssumeRole: one long-lived task per RoleSpec that fetches, sleeps until due, and repeats."""

    def __init__(self, assume: Assume, cache: CredentialCache, clock: Clock,
                 policy: RefreshPolicy | None = None, rng: random.Random | None = None,
                 on_outcome: Outcome = lambda state, seconds: None) -> None:
        self._assume = assume
        self._on_outcome = on_outcome
        self.in_flight = 0  # AssumeRole calls under way (at most one per key)
        self.cache = cache
        self._clock = clock
        self._policy = policy or RefreshPolicy()
        self._rng = rng or random.Random()
        self._tasks: dict[RoleSpec, asyncio.Task[None]] = {}
        self.states: dict[RoleSpec, RoleState] = {}
        self._changed = asyncio.Condition()

    def start(self, spec: RoleSpec) -> RoleState:
        """Starts the key's task unless it runs already; returns its state."""
        if spec not in self._tasks:
            self.states[spec] = RoleState(spec)
            self._tasks[spec] = asyncio.create_task(self._run(self.states[spec]), name=f"refresh {spec.role_arn}")
        return self.states[spec]

    async def stop(self, spec: RoleSpec | None = None) -> None:
        """Stops one key's task (and forgets its credentials), or every task."""
        specs = [spec] if spec is not None else list(self._tasks)
        tasks = [self._tasks.pop(s) for s in specs if s in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in specs:
            self.states.pop(s, None)
            self.cache.discard(s)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Returns once predicate() holds; re-checked after every AssumeRole outcome."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def wait_ready(self, spec: RoleSpec) -> Credentials:
        """First credentials of a started key. Transient errors are retried; a permanent one is raised."""
        state = self.states[spec]
        await self.wait_for(lambda: state.ready or state.fatal is not None)
        if state.fatal is not None:
            raise state.fatal
        creds = self.cache.get(spec)
        assert creds is not None, "a successful refresh always fills the cache"
        return creds

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _run(self, state: RoleState) -> None:
        spec = state.spec
        while True:
            state.attempts += 1
            state.last_attempt = self._clock.time()
            started = time.perf_counter()
            self.in_flight += 1
            try:
                creds = await self._assume(spec)
            except StsError as error:
                self._failed(state, error)
                if state.fatal is not None:
                    self._on_outcome(state, time.perf_counter() - started)
                    await self._notify()
                    return
            else:
                self._succeeded(state, creds, time.perf_counter() - started)
            finally:
                self.in_flight -= 1
            self._on_outcome(state, time.perf_counter() - started)
            await self._notify()
            await self._clock.sleep_until(state.next_attempt)

    def _succeeded(self, state: RoleState, creds: Credentials, seconds: float) -> None:
        self.cache.put(state.spec, creds)
        state.last_success = creds.obtained_at
        state.last_error = None
        state.failures_in_a_row = 0
        state.next_attempt = self._policy.refresh_at(creds, self._rng)
        log.info("refreshed %s: expires %s (took %.2f s); next refresh at %s", state.spec.role_arn,
                 format_time(creds.expiration), seconds, format_time(state.next_attempt),
                 extra={"event": "refresh", "role": state.spec.role_arn, "outcome": "success",
                        "expires": format_time(creds.expiration), "duration_s": round(seconds, 4)})

    def _failed(self, state: RoleState, error: StsError) -> None:
        state.last_error = error
        state.failures_in_a_row += 1
        if not state.ready and not error.transient:
            state.fatal = error  # reported once, by whoever waits for readiness
            return
        delay = self._policy.backoff(state.failures_in_a_row, self._rng)
        state.next_attempt = self._clock.time() + delay
        current = self.cache.get(state.spec)
        serving = f"still serving credentials valid until {format_time(current.expiration)}" \
            if current else "no valid credentials to serve"
        log.warning("AssumeRole of %s failed: %s; retry %d in %.1f s; %s", state.spec.role_arn, error,
                    state.failures_in_a_row, delay, serving,
                    extra={"event": "refresh", "role": state.spec.role_arn, "outcome": "failure",
                           "error_code": error.code})
