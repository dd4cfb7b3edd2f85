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
import random

import aiohttp
import moto.sts.models
import pytest

from metadata_proxy import scenario
from metadata_proxy.config import RoleConfig, ServeConfig
from metadata_proxy.daemon import Daemon
from metadata_proxy.model import Credentials
from metadata_proxy.refresher import RefreshPolicy, RoleState
from metadata_proxy.store import CredentialStore, UnusableCredentials
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
