"""The refresher: the only code that calls AssumeRole, and the only writer of the store.

Flow: STS (sts.py) -> Refresher -> CredentialStore (store.py). Requests only ever read the store.

- One task per RoleSpec, owned by the daemon: that is the single flight. No client request starts, joins or
  can cancel an AssumeRole (peers.md: kiam's shared call died with its first caller's context).
- Advisory refresh, in botocore's words: renew ahead of expiry, jittered, so that while STS is healthy every
  credential served has at least `floor` seconds left (1800 s, or half a shorter session), and a 3600 s
  session is renewed at most 3 times an hour (peers.md "near-expiry thrash"; contract §6).
- Mandatory refresh: the store stops serving an entry 60 s before it expires, whatever happens here.
- A failure (an StsError, or an answer the store refuses as too old) backs off, capped and jittered, and logs
  one line; the previous credentials stay served while valid.
- "Has succeeded once" (RoleState.succeeded) and "has valid credentials now" (Refresher.has_valid) are
  different states: after an outage the first holds and the second may not.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from metadata_proxy.clock import Clock
from metadata_proxy.model import Credentials, RoleSpec, format_time
from metadata_proxy.store import CredentialStore, UnusableCredentials
from metadata_proxy.sts import StsError

log = logging.getLogger("metadata_proxy.refresh")

FLOOR = 1800.0  # served credentials keep at least this long (botocore extends anything under ~1500 s)


@dataclass(frozen=True)
class RefreshPolicy:
    floor: float = FLOOR
    backoff_base: float = 1.0
    backoff_cap: float = 60.0

    def floor_for(self, lifetime: float) -> float:
        return min(self.floor, lifetime / 2)

    def advisory_refresh_at(self, creds: Credentials, rng: random.Random) -> float:
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


@dataclass
class RoleState:
    """What the refresher knows about one key; read by the routes for the error document and by logs."""

    spec: RoleSpec
    attempts: int = 0
    failures_in_a_row: int = 0
    last_error: StsError | None = None
    last_success: float | None = None
    next_attempt: float | None = None
    fatal: StsError | None = None  # a permanent error before the first success: the daemon cannot start

    @property
    def succeeded(self) -> bool:
        """At least one AssumeRole has succeeded (its credentials may have expired since)."""
        return self.last_success is not None


Assume = Callable[[RoleSpec], Awaitable[Credentials]]
# Called after every AssumeRole attempt with the key's state and how long the call took (seconds).
Outcome = Callable[[RoleState, float], None]


class Refresher:
    """Owns every AssumeRole: one long-lived task per RoleSpec that fetches, sleeps until due, and repeats."""

    def __init__(self, assume: Assume, store: CredentialStore, clock: Clock,
                 policy: RefreshPolicy | None = None, rng: random.Random | None = None,
                 on_outcome: Outcome = lambda state, seconds: None) -> None:
        self._assume = assume
        self._on_outcome = on_outcome
        self.in_flight = 0  # AssumeRole calls under way (at most one per key)
        self.store = store
        self._clock = clock
        self.policy = policy or RefreshPolicy()
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

    @property
    def running(self) -> frozenset[RoleSpec]:
        return frozenset(self._tasks)

    async def stop(self, spec: RoleSpec | None = None) -> None:
        """Stops one key's task (and forgets its credentials), or every task."""
        specs = [spec] if spec is not None else list(self._tasks)
        tasks = [self._tasks.pop(s) for s in specs if s in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in specs:
            self.states.pop(s, None)
            self.store.discard(s)

    def has_valid(self, spec: RoleSpec) -> bool:
        """The store would serve credentials for spec right now."""
        return self.store.get(spec) is not None

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Returns once predicate() holds; re-checked after every AssumeRole outcome."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def wait_ready(self, spec: RoleSpec) -> None:
        """Returns once a started key has valid credentials. Transient errors are retried; a permanent one
        before the first success is raised."""
        state = self.states[spec]
        await self.wait_for(lambda: self.has_valid(spec) or state.fatal is not None)
        if state.fatal is not None:
            raise state.fatal

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _run(self, state: RoleState) -> None:
        while True:
            state.attempts += 1
            started = time.perf_counter()
            self.in_flight += 1
            try:
                self._succeeded(state, await self._fetch(state.spec), time.perf_counter() - started)
            except StsError as error:
                self._failed(state, error)
            finally:
                self.in_flight -= 1
            self._on_outcome(state, time.perf_counter() - started)
            await self._notify()
            if state.fatal is not None:
                return
            assert state.next_attempt is not None
            await self._clock.sleep_until(state.next_attempt)

    async def _fetch(self, spec: RoleSpec) -> Credentials:
        """One AssumeRole whose answer the store accepted; every way it can fail is an StsError."""
        creds = await self._assume(spec)
        try:
            self.store.put(spec, creds)
        except UnusableCredentials as error:
            skew = " (is this host's clock ahead? compare it with an NTP source)" \
                if creds.expiration - creds.obtained_at < spec.duration_seconds / 2 else ""
            raise StsError("UnusableCredentials", f"STS returned credentials too close to expiry to serve: "
                           f"{error}{skew}", transient=True, role_arn=spec.role_arn) from None
        return creds

    def _succeeded(self, state: RoleState, creds: Credentials, seconds: float) -> None:
        state.last_success = creds.obtained_at
        state.last_error = None
        state.failures_in_a_row = 0
        state.next_attempt = self.policy.advisory_refresh_at(creds, self._rng)
        log.info("refreshed %s: expires %s (took %.2f s); next refresh at %s", state.spec.role_arn,
                 format_time(creds.expiration), seconds, format_time(state.next_attempt),
                 extra={"event": "refresh", "role": state.spec.role_arn, "outcome": "success",
                        "expires": format_time(creds.expiration), "duration_s": round(seconds, 4)})

    def _failed(self, state: RoleState, error: StsError) -> None:
        state.last_error = error
        state.failures_in_a_row += 1
        if not state.succeeded and not error.transient:
            state.fatal = error  # reported once, by whoever waits for readiness
            return
        delay = self.policy.backoff(state.failures_in_a_row, self._rng)
        state.next_attempt = self._clock.time() + delay
        current = self.store.get(state.spec)
        serving = f"still serving credentials valid until {format_time(current.expiration)}" \
            if current else "no valid credentials to serve"
        # An error (journalctl -p err) when only an operator can fix it, or when clients get nothing meanwhile.
        level = logging.WARNING if error.transient and current else logging.ERROR
        log.log(level, "AssumeRole of %s failed: %s; retry %d in %.1f s; %s", state.spec.role_arn, error,
                state.failures_in_a_row, delay, serving,
                extra={"event": "refresh", "role": state.spec.role_arn, "outcome": "failure",
                       "error_code": error.code})
