"""Cache and refresher behaviour with an injected clock: refresh timing, single flight, STS outages.

The daemon runs in-process on a FakeClock that moto's STS follows too; AssumeRole calls are counted (and
failed on demand) by the fault proxy in front of moto. Nothing here sleeps: the clock is advanced by hand,
and the tests wait on the refresher's own notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import random
from types import SimpleNamespace

import aiohttp
import moto.sts.models
import pytest

from metadata_proxy import refresher as refresher_module
from metadata_proxy import scenario
from metadata_proxy.config import RoleConfig, ServeConfig
from metadata_proxy.daemon import Daemon
from metadata_proxy.model import Credentials, RoleSpec
from metadata_proxy.refresher import Refresher, RefreshPolicy, RoleState
from metadata_proxy.store import CredentialStore, UnusableCredentials
from metadata_proxy.sts import StsError
from tests.conftest import World
from tests.support.fakeclock import FakeClock
from tests.support.http import get, token
from tests.support.net import parse_time

CREDS = "/latest/meta-data/iam/security-credentials/role-01"



def only_state(daemon: Daemon) -> RoleState:
    assert daemon.refresher is not None
    (state,) = daemon.refresher.states.values()
    return state


async def settle(daemon: Daemon, clock: FakeClock) -> RoleState:
    """Waits until no AssumeRole is due or running: the next one is scheduled in the future."""
    state = only_state(daemon)
    assert daemon.refresher is not None
    await daemon.refresher.wait_for(lambda: state.next_attempt is not None and state.next_attempt > clock.now)
    return state


async def read_credentials(url: str) -> dict:
    tok = await asyncio.to_thread(token, url)
    reply = await asyncio.to_thread(get, url, CREDS, tok)
    assert reply.status == 200
    return json.loads(reply.body)


def make_creds(now: float, lifetime: float = 3600) -> Credentials:
    return Credentials("ASIAEXAMPLE", "secret", "token", now + lifetime, now,
                       "arn:aws:sts::111111110001:assumed-role/role-01/s")


# --- pure policy and cache logic ---

@pytest.mark.parametrize("lifetime", [900, 1800, 3600, 7200, 43200])
def test_refresh_time_keeps_the_floor_with_room_for_retries(lifetime: int) -> None:
    """Refresh happens while the served remaining time is still above the floor (1800 s or half the session)."""
    policy = RefreshPolicy()
    for seed in range(200):
        creds = make_creds(1_000_000.0, lifetime)
        due = policy.advisory_refresh_at(creds, random.Random(seed))
        floor = min(1800, lifetime / 2)
        assert creds.expiration - due >= floor + 0.15 * (lifetime - floor) - 1e-6
        assert due - creds.obtained_at >= 0.70 * (lifetime - floor) - 1e-6


def test_refresh_rate_for_one_hour_sessions_is_at_most_three_an_hour() -> None:
    policy = RefreshPolicy()
    assert min(policy.advisory_refresh_at(make_creds(0.0), random.Random(s)) for s in range(500)) >= 1200


def test_backoff_grows_is_capped_and_jittered() -> None:
    policy = RefreshPolicy()
    rng = random.Random(7)
    delays = [policy.backoff(n, rng) for n in range(1, 40)]
    assert all(0 < d <= 60 for d in delays)  # never more than a minute between retries
    assert 0.5 <= delays[0] <= 1.0 and max(delays) > 30
    assert all(30 <= d <= 60 for d in delays[7:])  # capped at 60 s, with jitter never below half of it
    assert len({round(d, 6) for d in delays[10:]}) > 1  # jittered, not a fixed cap


def test_cache_never_returns_credentials_near_or_past_expiry() -> None:
    clock = FakeClock(start=1_000_000.0)
    cache = CredentialStore(clock)
    creds = make_creds(clock.now)
    spec = object()
    cache.put(spec, creds)  # type: ignore[arg-type]
    clock.advance_to(creds.expiration - 60 - 1)
    assert cache.get(spec) is creds  # type: ignore[arg-type]
    clock.advance_to(creds.expiration - 60)
    assert cache.get(spec) is None  # type: ignore[arg-type]


# --- the refresher on its own: STS answers scripted by the test, the fake clock, exact log lines ---

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
ARN = "arn:aws:iam::111111110001:role/role-01"
SPEC = RoleSpec(role_arn=ARN, session_name="s")
THROTTLED = StsError("Throttling", "Rate exceeded", transient=True, role_arn=ARN)
DENIED = StsError("AccessDenied", "not authorized", transient=False, role_arn=ARN)


class Bounds:
    """A jitter source that always picks one end of the range: schedules become literals."""

    def __init__(self, upper: bool) -> None:
        self.upper = upper

    def uniform(self, low: float, high: float) -> float:
        return high if self.upper else low


class ScriptedSts:
    """AssumeRole answering from a script: credentials, an access key id (a fresh one-hour session issued at the
    time of the call), or an StsError to raise. Each call is counted and can be held open by the test."""

    def __init__(self, clock: FakeClock, *answers: Credentials | StsError | str) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self, spec: RoleSpec) -> Credentials:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.pop(0) if self.answers else THROTTLED
        if isinstance(answer, StsError):
            raise answer
        return fresh(self.clock, key=answer) if isinstance(answer, str) else answer


def fresh(clock: FakeClock, lifetime: float = 3600, key: str = "ASIAEXAMPLE") -> Credentials:
    return Credentials(key, "secret", "token", clock.now + lifetime, clock.now,
                       "arn:aws:sts::111111110001:assumed-role/role-01/s")


@contextlib.asynccontextmanager
async def refreshing(sts: ScriptedSts, clock: FakeClock, upper: bool = True, outcomes: list | None = None):
    store = CredentialStore(clock)
    refresher = Refresher(sts, store, clock, rng=Bounds(upper),  # type: ignore[arg-type]
                          on_outcome=lambda state, seconds: (outcomes if outcomes is not None else []).append(
                              (state.last_error.code if state.last_error else "ok", seconds)))
    try:
        yield refresher
    finally:
        await refresher.stop()


def refresh_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, object]]]:
    return [(record.getMessage(), {key: getattr(record, key) for key in ("levelname", "event", "role", "outcome")} |
             ({"error_code": record.error_code} if hasattr(record, "error_code") else
              {"expires": record.expires, "duration_s": record.duration_s}))
            for record in caplog.records if record.name == "metadata_proxy.refresh"]


async def let_run() -> None:
    """Lets every task that is ready run to its next wait (a woken refresher reaches STS within a few turns)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def step(refresher: Refresher, sts: ScriptedSts, calls: int) -> RoleState:
    """Waits until the STS has been asked `calls` times and the refresher has dealt with the answer."""
    state = refresher.states[SPEC]
    await refresher.wait_for(lambda: sts.calls >= calls and state.next_attempt is not None
                             and (state.attempts >= calls) and refresher.in_flight == 0)
    return state


async def test_unit_success_schedules_the_advisory_refresh_and_says_so(caplog: pytest.LogCaptureFixture,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(NOW)
    sts = ScriptedSts(clock, fresh(clock))
    caplog.set_level(logging.INFO, logger="metadata_proxy.refresh")
    stopwatch = iter(1000 + n * 0.123456789 for n in range(100))  # each reading 0.123456789 s after the one before
    monkeypatch.setattr(refresher_module, "time", SimpleNamespace(perf_counter=lambda: next(stopwatch)))
    outcomes: list = []
    async with refreshing(sts, clock, upper=False, outcomes=outcomes) as refresher:
        state = refresher.start(SPEC)
        assert refresher.start(SPEC) is state  # started once, whatever asks again
        assert f"refresh {ARN}" in {task.get_name() for task in asyncio.all_tasks()}  # as asyncio reports it
        await refresher.wait_ready(SPEC)
        state = await step(refresher, sts, 1)
        assert refresher.has_valid(SPEC) and refresher.running == frozenset({SPEC})
        # 70 % of the 1800 s the credentials spend above the 1800 s floor
        assert (state.last_success, state.next_attempt, state.last_error, state.failures_in_a_row) == (
            NOW, NOW + 1260, None, 0)
        (message, fields), = refresh_lines(caplog)
        assert message == (f"refreshed {ARN}: expires 2027-01-15T09:00:00Z (took 0.12 s); next refresh at "
                           "2027-01-15T08:21:00Z")
        assert fields == {"levelname": "INFO", "event": "refresh", "role": ARN, "outcome": "success",
                          "expires": "2027-01-15T09:00:00Z", "duration_s": 0.1235}
        assert outcomes == [("ok", pytest.approx(0.246913578))]  # the STS latency metric: the call and the store
        clock.advance(1259)
        await let_run()
        assert sts.calls == 1  # not before it is due
        sts.answers.append("ASIASECOND")
        clock.advance(1)
        state = await step(refresher, sts, 2)
        assert refresher.store.get(SPEC).access_key_id == "ASIASECOND"  # type: ignore[union-attr]


async def test_unit_failures_back_off_keep_serving_and_say_what_is_served(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(NOW)
    sts = ScriptedSts(clock, THROTTLED, THROTTLED, "ASIAFIRST", THROTTLED)
    caplog.set_level(logging.INFO, logger="metadata_proxy.refresh")
    outcomes: list = []
    async with refreshing(sts, clock, outcomes=outcomes) as refresher:
        refresher.start(SPEC)
        state = await step(refresher, sts, 1)
        assert (state.next_attempt, state.failures_in_a_row, state.last_error) == (NOW + 1.0, 1, THROTTLED)
        assert not refresher.has_valid(SPEC) and state.fatal is None
        clock.advance(1.0)
        state = await step(refresher, sts, 2)
        assert state.next_attempt == NOW + 1.0 + 2.0
        clock.advance(2.0)
        state = await step(refresher, sts, 3)
        assert refresher.has_valid(SPEC) and state.failures_in_a_row == 0 and state.last_success == NOW + 3.0
        clock.advance_to(state.next_attempt)  # type: ignore[arg-type]
        state = await step(refresher, sts, 4)
        assert state.failures_in_a_row == 1 and refresher.has_valid(SPEC)  # the previous ones stay served
    failure = {"event": "refresh", "role": ARN, "outcome": "failure", "error_code": "Throttling"}
    assert [line for line in refresh_lines(caplog) if line[1]["outcome"] == "failure"] == [  # an error while clients
        (f"AssumeRole of {ARN} failed: Throttling: Rate exceeded; retry 1 in 1.0 s; no valid credentials to serve",
         {"levelname": "ERROR", **failure}),  # get nothing, a warning while the previous credentials are served
        (f"AssumeRole of {ARN} failed: Throttling: Rate exceeded; retry 2 in 2.0 s; no valid credentials to serve",
         {"levelname": "ERROR", **failure}),
        (f"AssumeRole of {ARN} failed: Throttling: Rate exceeded; retry 1 in 1.0 s; still serving credentials valid "
         "until 2027-01-15T09:00:03Z", {"levelname": "WARNING", **failure}),
    ]
    assert [code for code, _ in outcomes] == ["Throttling", "Throttling", "ok", "Throttling"]


async def test_unit_a_permanent_error_before_any_success_stops_the_start_and_is_not_retried() -> None:
    clock = FakeClock(NOW)
    sts = ScriptedSts(clock, DENIED, fresh(clock))
    async with refreshing(sts, clock) as refresher:
        refresher.start(SPEC)
        with pytest.raises(StsError) as raised:
            await refresher.wait_ready(SPEC)
        assert raised.value is DENIED and refresher.states[SPEC].fatal is DENIED
        clock.advance(3600)
        await let_run()
        assert sts.calls == 1 and not refresher.has_valid(SPEC)


async def test_unit_a_permanent_error_after_a_success_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(NOW)
    sts = ScriptedSts(clock, "ASIAFIRST", DENIED, "ASIAAGAIN")
    caplog.set_level(logging.INFO, logger="metadata_proxy.refresh")
    async with refreshing(sts, clock) as refresher:
        refresher.start(SPEC)
        await refresher.wait_ready(SPEC)
        state = await step(refresher, sts, 1)
        clock.advance_to(state.next_attempt)  # type: ignore[arg-type]
        state = await step(refresher, sts, 2)
        assert state.fatal is None and state.next_attempt == clock.now + 1.0
        clock.advance(1.0)
        await step(refresher, sts, 3)
        assert refresher.store.get(SPEC).access_key_id == "ASIAAGAIN"  # type: ignore[union-attr]
    # only an operator can fix a denial: an error even while the previous credentials are still served
    assert [fields["levelname"] for _, fields in refresh_lines(caplog)] == ["INFO", "ERROR", "INFO"]


@pytest.mark.parametrize(("obtained", "hint"), [
    (0, " (is this host's clock ahead? compare it with an NTP source)"),  # issued with 30 s left: a skewed clock
    (-1769, " (is this host's clock ahead? compare it with an NTP source)"),  # less than half the session: skew
    (-1770, ""),  # exactly half the 3600 s session
    (-3570, ""),  # a whole session that is simply over by now
])
async def test_unit_an_answer_too_close_to_expiry_is_a_failure_that_says_why(obtained: float, hint: str) -> None:
    clock = FakeClock(NOW)
    late = Credentials("ASIALATE", "secret", "token", NOW + 30, NOW + obtained,
                       "arn:aws:sts::111111110001:assumed-role/role-01/s")
    sts = ScriptedSts(clock, late)
    async with refreshing(sts, clock) as refresher:
        refresher.start(SPEC)
        state = await step(refresher, sts, 1)
        assert state.last_error is not None and state.last_error.code == "UnusableCredentials"
        assert state.last_error.transient and state.fatal is None and not refresher.has_valid(SPEC)
        assert str(state.last_error) == (
            "UnusableCredentials: STS returned credentials too close to expiry to serve: they expire at "
            f"2027-01-15T08:00:30Z, 30 s from now by this host's clock, and are served only until 60 s before "
            f"that{hint}")


async def test_unit_in_flight_counts_the_call_under_way_and_stop_forgets_the_role() -> None:
    clock = FakeClock(NOW)
    sts = ScriptedSts(clock, fresh(clock))
    sts.gate = asyncio.Event()
    async with refreshing(sts, clock) as refresher:
        refresher.start(SPEC)
        while sts.calls == 0:  # the task's first step: it calls STS without waiting for anything else
            await asyncio.sleep(0)
        assert refresher.in_flight == 1
        sts.gate.set()
        await refresher.wait_ready(SPEC)
        assert refresher.in_flight == 0
        await refresher.stop(SPEC)
        assert (refresher.running, refresher.states, refresher.has_valid(SPEC)) == (frozenset(), {}, False)
        # again, and a role never started: a failed reload's undo may stop what the shutdown stopped already
        await refresher.stop(SPEC)
        await refresher.stop(RoleSpec(role_arn="arn:aws:iam::111111110001:role/never-started", session_name="s"))
        clock.advance(7200)
        await let_run()
        assert sts.calls == 1  # its task is gone


async def test_unit_stopping_one_role_leaves_the_others_running() -> None:
    """A reload that drops one role stops its task alone: the others keep their credentials and their schedule."""
    clock = FakeClock(NOW)
    other = RoleSpec(role_arn="arn:aws:iam::111111110001:role/role-04", session_name="s")
    sts = ScriptedSts(clock, "ASIAFIRST", "ASIAOTHER", "ASIARENEWED")
    async with refreshing(sts, clock) as refresher:
        refresher.start(SPEC)
        await refresher.wait_ready(SPEC)
        refresher.start(other)
        await refresher.wait_ready(other)
        await refresher.stop(SPEC)
        assert refresher.running == frozenset({other}) and set(refresher.states) == {other}
        assert refresher.store.get(other).access_key_id == "ASIAOTHER"  # type: ignore[union-attr]
        assert refresher.store.get(SPEC) is None
        clock.advance_to(refresher.states[other].next_attempt)  # type: ignore[arg-type]
        await refresher.wait_for(lambda: sts.calls == 3 and refresher.in_flight == 0)
        assert refresher.store.get(other).access_key_id == "ASIARENEWED"  # type: ignore[union-attr]


# --- the daemon against moto, on the fake clock ---

async def test_served_credentials_keep_1800s_and_sts_sees_at_most_three_calls_an_hour(
        in_process_daemon, clock: FakeClock, world: World) -> None:
    """Contract §6.2 / §8.9 and peers.md near-expiry thrash: six simulated hours in 30 s steps."""
    async with in_process_daemon() as daemon:
        call_times: list[float] = []
        seen_calls = world.proxy.calls["AssumeRole"]
        for _ in range(6 * 120):
            clock.advance(30)
            await settle(daemon, clock)
            while world.proxy.calls["AssumeRole"] > seen_calls:
                seen_calls += 1
                call_times.append(clock.now)
            doc = await read_credentials(daemon.url)
            assert parse_time(doc["Expiration"]) - clock.now >= 1800
        assert len(call_times) >= 12  # it did refresh, repeatedly
        for start in call_times:
            assert sum(1 for t in call_times if start <= t < start + 3600) <= 3


async def test_single_flight_under_300_concurrent_readers(in_process_daemon, clock: FakeClock,
                                                          world: World) -> None:
    """peers.md 'stampede': 300 cold clients cost no AssumeRole; a refresh in flight is one call, and
    readers meanwhile get the previous credentials without waiting for STS."""
    async with in_process_daemon() as daemon:
        assert world.proxy.calls["AssumeRole"] == 1

        async def full_fetch(session: aiohttp.ClientSession) -> dict:
            async with session.put(daemon.url + "latest/api/token",
                                   headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"}) as reply:
                tok = await reply.text()
            headers = {"X-aws-ec2-metadata-token": tok}
            async with session.get(daemon.url + "latest/meta-data/iam/security-credentials/", headers=headers) as r:
                name = await r.text()
            async with session.get(daemon.url + "latest/meta-data/iam/security-credentials/" + name,
                                   headers=headers) as reply:
                assert reply.status == 200
                return json.loads(await reply.text())

        connector = aiohttp.TCPConnector(limit=300, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            cold = await asyncio.gather(*(full_fetch(session) for _ in range(300)))
            assert world.proxy.calls["AssumeRole"] == 1
            first_key = cold[0]["AccessKeyId"]
            assert {doc["AccessKeyId"] for doc in cold} == {first_key}

            gate = world.proxy.hold("AssumeRole")
            state = only_state(daemon)
            clock.advance_to(state.next_attempt)
            assert await asyncio.to_thread(world.proxy.wait_for_calls, "AssumeRole", 2)
            during = await asyncio.gather(*(full_fetch(session) for _ in range(300)))
            assert {doc["AccessKeyId"] for doc in during} == {first_key}
            assert world.proxy.calls["AssumeRole"] == 2
            gate.set()
            await settle(daemon, clock)
            after = await full_fetch(session)
            assert after["AccessKeyId"] != first_key
            assert world.proxy.calls["AssumeRole"] == 2


@pytest.mark.parametrize(("fault", "code"), [("503", "ServiceUnavailable"), ("throttle", "Throttling"),
                                             ("reset", "ConnectionError"), ("denied", "AssumeRoleUnauthorizedAccess")])
async def test_outage_serves_previous_credentials_then_error_document_then_recovers(
        in_process_daemon, clock: FakeClock, world: World, fault: str, code: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Issue: keep serving while valid, never expired or blank, the IMDS error document once nothing is valid
    (contract §5.1, §6.3-6.4), recovery on the first retry after STS returns."""
    async with in_process_daemon() as daemon:
        original = await read_credentials(daemon.url)
        expiry = parse_time(original["Expiration"])
        world.proxy.outage("AssumeRole", fault)
        state = only_state(daemon)
        served_error = False
        while not served_error:
            clock.advance_to(state.next_attempt)
            await settle(daemon, clock)
            assert state.last_error is not None
            doc = await read_credentials(daemon.url)
            if doc["Code"] == "Success":
                assert doc["AccessKeyId"] == original["AccessKeyId"]
                assert parse_time(doc["Expiration"]) - clock.now > 60
            else:
                served_error = True
                assert clock.now >= expiry - 60
                assert doc["Code"] == code
                assert doc["Message"] and parse_time(doc["LastUpdated"]) <= clock.now
                assert not {"AccessKeyId", "SecretAccessKey", "Token"} & set(doc)
        failures = world.proxy.calls["AssumeRole"] - 1
        # Bounded retry rate: capped exponential backoff, not a busy loop.
        assert failures <= (clock.now - (expiry - 3600)) / 30
        assert f"{state.last_error.code}" in caplog.text

        world.proxy.outage("AssumeRole", None)
        clock.advance_to(state.next_attempt)
        await settle(daemon, clock)
        recovered = await read_credentials(daemon.url)
        assert recovered["Code"] == "Success"
        assert parse_time(recovered["Expiration"]) - clock.now >= 1800


# --- answers that are not usable (a clock ahead of STS, a spoiled answer) ---

def sts_clock_behind(monkeypatch: pytest.MonkeyPatch, clock: FakeClock, seconds: float) -> None:
    """moto's STS issues Expirations from a clock `seconds` behind this host's: this host's clock is ahead."""
    monkeypatch.setattr(moto.sts.models, "utcnow", lambda: datetime.datetime.fromtimestamp(
        clock.now - seconds, datetime.UTC).replace(tzinfo=None))


@contextlib.asynccontextmanager
async def starting_daemon(world: World, clock: FakeClock, monkeypatch: pytest.MonkeyPatch):
    """The in-process daemon as a task that may never become ready; yields it once its refresher runs."""
    for name, value in world.source.environ().items():
        monkeypatch.setenv(name, value)
    role = RoleConfig(role_arn=scenario.ROLE_01_ARN, port=0, role_session_name="test-session")
    daemon = Daemon(ServeConfig(roles=(role,), region=scenario.REGION, sts_endpoint_url=world.sts_url), clock)
    task = asyncio.create_task(daemon.run())
    while daemon.refresher is None or not daemon.refresher.states:
        assert not task.done(), task
        await asyncio.sleep(0)
    try:
        yield daemon, task
    finally:
        daemon.request_stop()
        await task


@pytest.mark.parametrize("ahead", [7200, 3550])  # past the whole session; inside the last 60 s of it
async def test_clock_ahead_of_sts_at_start_backs_off_and_says_so(
        world: World, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        ahead: int) -> None:
    """Credentials that are already expired, or expire within 60 s, by this host's clock are a failed refresh:
    retried with backoff (not ~60 AssumeRole calls a second), one line each that suggests the clock."""
    sts_clock_behind(monkeypatch, clock, ahead)
    async with starting_daemon(world, clock, monkeypatch) as (daemon, task):
        state = only_state(daemon)
        for attempt in range(1, 9):
            await daemon.refresher.wait_for(lambda n=attempt: state.attempts >= n)
            assert state.attempts == attempt == state.failures_in_a_row
            assert world.proxy.calls_from("AssumeRole", "test-session") == attempt
            assert state.last_error is not None and state.last_error.code == "UnusableCredentials"
            wait = state.next_attempt - clock.now
            assert min(60, 2 ** (attempt - 1)) / 2 <= wait <= 60  # equal jitter, capped at 60 seconds
            clock.advance_to(state.next_attempt)
        assert not task.done() and daemon.listeners[0].routes is None  # never served, still trying
    failures = [r for r in caplog.records if r.getMessage().startswith("AssumeRole of")]
    assert len(failures) >= 8 and all("clock ahead" in r.getMessage() for r in failures)
    assert "Traceback" not in caplog.text


async def test_answer_inside_the_last_minute_keeps_the_valid_credentials_served(
        in_process_daemon, world: World, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh whose answer expires within 60 s is refused by the store, which keeps serving the previous,
    still valid credentials (it used to evict them: 34 of 40 fetches then got nothing)."""
    async with in_process_daemon() as daemon:
        original = await read_credentials(daemon.url)
        state = only_state(daemon)
        sts_clock_behind(monkeypatch, clock, 3570)
        calls = world.proxy.calls_from("AssumeRole", "test-session")
        clock.advance_to(state.next_attempt)
        await settle(daemon, clock)
        assert state.last_error is not None and state.last_error.code == "UnusableCredentials"
        for _ in range(40):
            doc = await read_credentials(daemon.url)
            assert doc["Code"] == "Success" and doc["AccessKeyId"] == original["AccessKeyId"]
        assert world.proxy.calls_from("AssumeRole", "test-session") == calls + 1  # one refused answer, no spin


@pytest.mark.parametrize("fault", ["arn-without-account", "blank-secret"])
async def test_spoiled_answer_is_a_failed_refresh_not_a_500(in_process_daemon, world: World, clock: FakeClock,
                                                            fault: str) -> None:
    """An AssumedRoleUser ARN without its account, or a blank key, is never stored: every GET keeps getting the
    previous credentials (it used to be a 500 on every credential GET until the next refresh)."""
    async with in_process_daemon() as daemon:
        original = await read_credentials(daemon.url)
        state = only_state(daemon)
        world.proxy.fail_next("AssumeRole", fault)
        clock.advance_to(state.next_attempt)
        await settle(daemon, clock)
        assert state.last_error is not None and state.last_error.code == "IncompleteResponse"
        for path in (CREDS, "/latest/meta-data/iam/security-credentials-extended/role-01"):
            reply = await asyncio.to_thread(get, daemon.url, path, await asyncio.to_thread(token, daemon.url))
            assert reply.status == 200 and json.loads(reply.body)["AccessKeyId"] == original["AccessKeyId"]
        clock.advance_to(state.next_attempt)  # the retry gets a good answer
        await settle(daemon, clock)
        assert state.last_error is None and (await read_credentials(daemon.url))["AccessKeyId"] != original[
            "AccessKeyId"]


def test_store_refuses_credentials_past_their_usable_time_and_keeps_what_it_had() -> None:
    clock = FakeClock(start=1_000_000.0)
    store = CredentialStore(clock)
    spec = object()
    valid = make_creds(clock.now)
    store.put(spec, valid)  # type: ignore[arg-type]
    for remaining in (60, 59, 0, -3600):
        with pytest.raises(UnusableCredentials):
            store.put(spec, make_creds(clock.now - 3600 + remaining))  # type: ignore[arg-type]
        assert store.get(spec) is valid  # type: ignore[arg-type]
    store.put(spec, make_creds(clock.now - 3600 + 61))  # type: ignore[arg-type]  # 61 s left: usable, for 1 s


def test_refused_credentials_say_when_they_expire_and_how_far_that_is() -> None:
    store = CredentialStore(FakeClock(start=1_000_000.0))  # 1970-01-12T13:46:40Z
    with pytest.raises(UnusableCredentials) as refused:
        store.put(object(), make_creds(1_000_000.0 - 3600 + 30))  # type: ignore[arg-type]
    assert str(refused.value) == ("they expire at 1970-01-12T13:47:10Z, 30 s from now by this host's clock, and "
                                  "are served only until 60 s before that")


def test_every_change_of_the_store_is_a_new_generation() -> None:
    """Readers memoise what they rendered by the generation: a value that came back would serve stale documents
    (the credentials of before a discard, or before the latest refresh)."""
    clock = FakeClock(start=1_000_000.0)
    store = CredentialStore(clock)
    spec = object()
    seen = [store.generation]
    for change in (lambda: store.put(spec, make_creds(clock.now)), lambda: store.put(spec, make_creds(clock.now)),
                   lambda: store.discard(spec), lambda: store.put(spec, make_creds(clock.now)),
                   lambda: store.discard(spec), lambda: store.discard(spec)):
        change()  # type: ignore[no-untyped-call]
        seen.append(store.generation)
    assert len(set(seen)) == len(seen)


async def test_a_reload_after_the_credentials_expired_in_an_outage_keeps_the_daemon(
        in_process_daemon, world: World, clock: FakeClock) -> None:
    """'Has succeeded once' is not 'has valid credentials now': a reload during an outage that outlived the
    credentials used to end the process (a failed assertion); it keeps the daemon, which recovers later."""
    async with in_process_daemon() as daemon:
        original = await read_credentials(daemon.url)
        state = only_state(daemon)
        world.proxy.outage("AssumeRole", "503")
        while daemon.refresher.has_valid(state.spec):
            clock.advance_to(state.next_attempt)
            await settle(daemon, clock)
        assert state.succeeded and (await read_credentials(daemon.url))["Code"] == "ServiceUnavailable"
        daemon.load_config = lambda: daemon.config
        await daemon.reload()
        assert daemon.reload_rejected is None and not daemon.stop_requested.is_set()
        world.proxy.outage("AssumeRole", None)
        clock.advance_to(state.next_attempt)
        await settle(daemon, clock)
        recovered = await read_credentials(daemon.url)
        assert recovered["Code"] == "Success" and recovered["AccessKeyId"] != original["AccessKeyId"]


async def test_one_refresher_task_per_role_across_reloads(in_process_daemon, world: World, clock: FakeClock) -> None:
    """Ten reloads of the same configuration start no second task: the next refresh is one AssumeRole."""
    async with in_process_daemon() as daemon:
        daemon.load_config = lambda: daemon.config
        for _ in range(10):
            await daemon.reload()
        assert world.proxy.calls["AssumeRole"] == 1
        state = only_state(daemon)
        clock.advance_to(state.next_attempt)
        await settle(daemon, clock)
        assert world.proxy.calls["AssumeRole"] == 2
        assert len(daemon.refresher.running) == 1
