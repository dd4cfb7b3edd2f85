"""`python -m bench.soak`: continuous client load through many refreshes and every kind of STS fault.

    python -m bench.soak                 # about two minutes of real time, hours of daemon time
    python -m bench.soak --smoke         # a few seconds (CI)

The daemon runs in this process on a clock that runs fast (moto's STS follows it), so one-hour sessions
are renewed every few seconds of real time; nothing in the daemon is changed for it. Clients: raw HTTP
(aiohttp, the IMDSv2 sequence) and botocore's own instance-metadata fetcher (the code every boto3 process
runs), whose credentials are then used for a real STS call. The fault proxy in front of moto injects
throttling, 5xx, hangs past the STS timeout, connection resets and outages.

Phase 1 (faults, and an outage longer than a refresh interval but shorter than the credentials' life):
zero failed client requests, zero expired or blank credentials served, a bounded STS retry rate.
Phase 2 (an outage longer than the credentials' life): the error document is served, never expired or
blank credentials, and service resumes within one backoff step of STS returning.
The verdicts hold whatever the machine's load: the clock stands still while an AssumeRole call is under way,
each served document is judged by the phase and daemon time at which it was asked for, and a phase ends only
once the clients had their turn in it (bounded). So CI's smoke requires every one of them.
Writes soak.json and exits 0 only if every expectation held.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import datetime
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import boto3
import moto.sts.models
from botocore.utils import InstanceMetadataFetcher
from moto.server import ThreadedMotoServer

from metadata_proxy import scenario
from metadata_proxy.config import RoleConfig, ServeConfig
from metadata_proxy.daemon import Daemon
from metadata_proxy.refresher import RefreshPolicy
from tests.support.fakeclock import FakeClock
from tests.support.faultproxy import FaultProxy

from .provenance import provenance

CREDS = "latest/meta-data/iam/security-credentials/"
LONG_OUTAGE = "phase 2: long outage"
CLIENT_TIMEOUT = 10.0  # seconds a client waits for an answer: a safety net, never a speed test


def parse_time(text: str) -> float:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    expired_served: int = 0
    blank_served: int = 0
    error_documents: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failed += 1
        if len(self.failures) < 20:
            self.failures.append(what)


class Soak:
    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.warp = 1500.0 if smoke else 300.0  # daemon seconds per real second
        self.tick = 0.02
        self.clock = FakeClock()
        self.phase = "warm-up"
        self.tallies: dict[str, Tally] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.events: list[dict] = []

    def tally(self, phase: str | None = None) -> Tally:
        return self.tallies.setdefault(phase or self.phase, Tally())

    def begin(self) -> tuple[str, float]:
        """A client request starts: the phase and the daemon time it is judged by. A document is judged
        against the moment it was asked for, not the moment the (possibly descheduled) client reads it: the
        clock only moves forward, so an Expiration before that moment was expired when served, whatever the
        machine's load; judging by a later moment could call a valid document expired."""
        return self.phase, self.clock.now

    def note(self, event: str, **details: object) -> None:
        self.events.append({"t": round(self.clock.now - self.start, 1), "phase": self.phase, "event": event,
                            **details})

    def judge(self, document: dict, source: str, asked: tuple[str, float]) -> None:
        """One served credentials document, checked against the daemon's clock when it was asked for."""
        phase, moment = asked
        with self.lock:
            tally = self.tally(phase)
            if document.get("Code") not in (None, "Success"):
                if phase == LONG_OUTAGE:
                    tally.error_documents += 1
                else:
                    tally.fail(f"{source}: {document.get('Code')} in {phase}")
                if {"AccessKeyId", "SecretAccessKey", "Token"} & set(document):
                    tally.blank_served += 1
                return
            if not all(document.get(k) for k in ("AccessKeyId", "SecretAccessKey", "Token", "Expiration")):
                tally.blank_served += 1
                tally.fail(f"{source}: blank credentials")
                return
            if parse_time(document["Expiration"]) <= moment:
                tally.expired_served += 1
                tally.fail(f"{source}: expired credentials")
                return
            tally.ok += 1

    # --- clients ---

    async def raw_client(self, base: str) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)) as session:
            while not self.stop.is_set():
                asked = self.begin()
                try:
                    async with session.put(base + "latest/api/token",
                                           headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"}) as reply:
                        token = await reply.text()
                    headers = {"X-aws-ec2-metadata-token": token}
                    async with session.get(base + CREDS, headers=headers) as reply:
                        name = await reply.text()
                    async with session.get(base + CREDS + name, headers=headers) as reply:
                        document = json.loads(await reply.text())
                        if reply.status != 200:
                            raise RuntimeError(f"status {reply.status}")
                except Exception as error:  # any failure of a client request counts
                    with self.lock:
                        self.tally(asked[0]).fail(f"raw: {error!r}")
                else:
                    self.judge(document, "raw", asked)
                await asyncio.sleep(0.002)  # a client's pace, not a wait for state

    def botocore_client(self, base: str, sts_url: str) -> None:
        # env: this process disables IMDS for the daemon's own chain; the client must not inherit that.
        # timeout: a safety net, not a speed test (botocore's default of 1 s fails on a starved machine)
        fetcher = InstanceMetadataFetcher(timeout=CLIENT_TIMEOUT, num_attempts=1, env={},
                                          config={"ec2_metadata_service_endpoint": base})
        while not self.stop.is_set():
            asked = self.begin()
            try:
                found = fetcher.retrieve_iam_role_credentials()
            except Exception as error:
                with self.lock:
                    self.tally(asked[0]).fail(f"botocore: {error!r}")
                continue
            if not found:  # botocore's way of saying "no credentials here" (an error document)
                self.judge({"Code": "NoCredentials"}, "botocore", asked)
                continue
            self.judge({"Code": "Success", "AccessKeyId": found["access_key"],
                        "SecretAccessKey": found["secret_key"], "Token": found["token"],
                        "Expiration": found["expiry_time"]}, "botocore", asked)
            try:
                boto3.Session(aws_access_key_id=found["access_key"], aws_secret_access_key=found["secret_key"],
                              aws_session_token=found["token"], region_name=scenario.REGION).client(
                    "sts", endpoint_url=sts_url).get_caller_identity()
            except Exception as error:
                with self.lock:
                    self.tally(asked[0]).fail(f"sts with served credentials: {error!r}")

    # --- the daemon's clock ---

    async def run_clock(self, daemon: Daemon) -> None:
        """Daemon time advances a fixed step per tick, except while an AssumeRole call is under way: how long
        STS takes in real time (long, on a starved machine, and multiplied by the warp) must not age the
        credentials, or the verdicts would measure the machine's load instead of the daemon."""
        while not self.stop.is_set():
            await asyncio.sleep(self.tick)
            if not daemon.refresher.in_flight:
                self.clock.advance(self.warp * self.tick)

    async def served(self, what: Callable[[Tally], int] = lambda tally: tally.ok) -> None:
        """Until the current phase has seen `what` (a client served, by default), so that a phase never ends
        before the clients had their turn in it, however slowly the machine runs them. Bounded: past the
        deadline the phase ends anyway, and the verdicts say what was missing."""
        deadline = time.monotonic() + CLIENT_TIMEOUT * 6
        while not what(self.tally()) and time.monotonic() < deadline:
            await asyncio.sleep(self.tick)

    async def until(self, moment: float) -> None:
        while self.clock.now < moment:
            await asyncio.sleep(self.tick)

    async def next_success(self, daemon: Daemon) -> float:
        """Waits for the next successful refresh; returns its (daemon) time."""
        (state,) = daemon.refresher.states.values()
        last = state.last_success
        await daemon.refresher.wait_for(lambda: state.last_success != last)
        return state.last_success

    # --- the scenario ---

    async def scenario(self, daemon: Daemon, proxy: FaultProxy) -> dict:
        (state,) = daemon.refresher.states.values()
        results: dict = {}
        self.phase = "phase 1: faults"
        calls_before = proxy.calls["AssumeRole"]
        faults = (("throttle", "503", "reset", "500"), ("hang",)) if self.smoke else (
            ("throttle", "throttle"), ("503",), ("reset", "500"), ("hang",), ("throttle", "503", "reset"))
        for burst in faults:  # each burst hits one refresh and its retries
            proxy.fail_next("AssumeRole", *burst)
            await daemon.refresher.wait_for(lambda: state.last_error is not None)
            await self.next_success(daemon)
            self.note("faults survived", kinds=list(burst))
        await self.served()
        self.phase = "phase 1: outage shorter than the credentials' life"
        await self.next_success(daemon)
        outage = 2500.0  # > a refresh interval (1260-1530 s), < a session (3600 s)
        calls_before_outage = proxy.calls["AssumeRole"]
        proxy.outage("AssumeRole", "503")
        started = self.clock.now
        self.note("outage", seconds=outage)
        await self.until(started + outage)
        proxy.outage("AssumeRole", None)
        retries = proxy.calls["AssumeRole"] - calls_before_outage
        recovered_at = await self.next_success(daemon)
        results["phase1_outage"] = {"seconds": outage, "assume_role_calls": retries,
                                    "calls_per_hour": retries / (outage / 3600),
                                    "recovered_after_s": recovered_at - (started + outage)}
        await self.served()
        self.phase = "steady"
        await self.next_success(daemon)
        await self.next_success(daemon)
        await self.served()
        results["phase1_assume_role_calls"] = proxy.calls["AssumeRole"] - calls_before

        self.phase = LONG_OUTAGE
        await self.next_success(daemon)
        await self.served()  # while the credentials are fresh
        outage = 5000.0  # > a session
        proxy.outage("AssumeRole", "503")
        started = self.clock.now
        self.note("outage", seconds=outage)
        await self.until(started + outage)
        await self.served(lambda tally: tally.error_documents)  # the clients saw the credentials run out
        outage = self.clock.now - started
        proxy.outage("AssumeRole", None)
        returned, attempts, scheduled = self.clock.now, state.attempts, state.next_attempt
        recovered = await self.next_success(daemon)
        self.phase = "after"
        await self.until(self.clock.now + 600)
        await self.served()
        # The retry scheduled when STS came back is at most one backoff step away, and it (or, if one was
        # already under way, the one after it) succeeds.
        results["phase2"] = {"seconds": outage, "recovered_after_s": recovered - returned,
                             "next_retry_was_due_in_s": scheduled - returned,
                             "attempts_to_recover": state.attempts - attempts,
                             "backoff_cap_s": RefreshPolicy().backoff_cap}
        return results


async def soak(smoke: bool, out: Path) -> dict:
    measured = provenance(out)
    run = Soak(smoke)
    moto.sts.models.utcnow = lambda: datetime.datetime.fromtimestamp(run.clock.now, datetime.UTC).replace(tzinfo=None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto_url = f"http://{host}:{port}"
    proxy = FaultProxy(host, port).start()
    os.environ.update(scenario.build_world(moto_url).environ(), AWS_EC2_METADATA_DISABLED="true",
                      AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    role = RoleConfig(role_arn=scenario.ROLE_01_ARN, port=0, role_session_name="soak")
    daemon = Daemon(ServeConfig(roles=(role,), region=scenario.REGION, sts_endpoint_url=proxy.url, sts_timeout=1.0),
                    run.clock)
    serving = await daemon.start_in_background()
    run.start = run.clock.now
    clock = asyncio.create_task(run.run_clock(daemon))
    raw = [asyncio.create_task(run.raw_client(daemon.url)) for _ in range(4)]
    threads = [threading.Thread(target=run.botocore_client, args=(daemon.url, moto_url), daemon=True)
               for _ in range(2)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    try:
        results = await run.scenario(daemon, proxy)
    finally:
        run.stop.set()
        await asyncio.gather(*raw, return_exceptions=True)
        for thread in threads:
            thread.join(timeout=30)
        clock.cancel()
        daemon.request_stop()
        await serving
        proxy.stop()
        server.stop()
    results.update(provenance=measured, smoke=smoke, warp=run.warp,
                   real_seconds=round(time.monotonic() - started, 1),
                   daemon_hours=round((run.clock.now - run.start) / 3600, 2),
                   refreshes=daemon.metrics.registry.get_sample_value(
                       "metadata_proxy_assume_role_calls_total",
                       {"role": scenario.ROLE_01_ARN, "outcome": "success", "error_code": ""}),
                   tallies={k: asdict(v) for k, v in run.tallies.items()},
                   events=run.events, assume_role_calls=proxy.calls["AssumeRole"])
    results["passed"] = verdict(results)
    return results


def verdict(results: dict) -> dict[str, bool]:
    tallies = results["tallies"]
    phase1 = [t for name, t in tallies.items() if name != LONG_OUTAGE]
    phase2 = tallies.get(LONG_OUTAGE, {})
    cap = results["phase2"]["backoff_cap_s"]
    return {
        "no failed client request outside the long outage": all(t["failed"] == 0 for t in phase1),
        "no expired or blank credentials, ever": all(t["expired_served"] == 0 and t["blank_served"] == 0
                                                     for t in tallies.values()),
        "clients were served in every phase": all(t["ok"] > 0 for t in tallies.values()),
        "error document during the long outage": phase2.get("error_documents", 0) > 0,
        "bounded STS retry rate (<= 120 calls per outage hour)": results["phase1_outage"]["calls_per_hour"] <= 120,
        "resumed within one backoff step of STS returning": results["phase2"]["next_retry_was_due_in_s"] <= cap
        and results["phase2"]["attempts_to_recover"] <= 2,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a faster clock: seconds instead of minutes")
    parser.add_argument("--out", type=Path, default=None, help="result folder (default bench-results/soak-<time>)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("metadata_proxy.refresh").setLevel(logging.ERROR)  # the injected failures, by design
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines
    out = args.out or Path("bench-results", time.strftime("soak-%Y%m%dT%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(soak(args.smoke, out))
    (out / "soak.json").write_text(json.dumps(results, indent=2))
    for expectation, held in results["passed"].items():
        print(f"{'ok  ' if held else 'FAIL'} {expectation}")
    print(json.dumps({name: {k: v for k, v in t.items() if k != "failures"}
                      for name, t in results["tallies"].items()}, indent=1))
    print(f"soak: {results['daemon_hours']} daemon hours in {results['real_seconds']} s; results in {out}")
    return 0 if all(results["passed"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
