"""How many AssumeRole calls the daemon makes: for a crowd of cold clients (goal: the one prefetch), and
per hour of simulated time (goal: at most 3 with one-hour sessions)."""

from __future__ import annotations

import asyncio
import datetime
import os

import aiohttp
import moto.sts.models

from metadata_proxy import scenario
from metadata_proxy.config import RoleConfig, ServeConfig
from metadata_proxy.daemon import Daemon
from tests.support.fakeclock import FakeClock
from tests.support.faultproxy import FaultProxy

from . import servers


async def _full_fetch(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with session.put(base + "latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}) as r:
            token = await r.text()
        headers = {"X-aws-ec2-metadata-token": token}
        async with session.get(base + "latest/meta-data/iam/security-credentials/", headers=headers) as r:
            name = await r.text()
        async with session.get(base + "latest/meta-data/iam/security-credentials/" + name, headers=headers) as r:
            return r.status == 200 and (await r.json(content_type=None))["Code"] == "Success"
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return False


def cold_clients(world: servers.World, proxy: FaultProxy, loop: str, clients: int) -> dict:
    """A fresh daemon, then `clients` SDK-style fetches all at once."""
    proxy.reset()
    with servers.product(world, loop) as product:
        base = servers.base_url(product)

        async def crowd() -> list[bool]:
            connector = aiohttp.TCPConnector(limit=clients, force_close=True)
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                return await asyncio.gather(*(_full_fetch(session, base) for _ in range(clients)))

        outcomes = asyncio.run(crowd())
    return {"run": product.run, "clients": clients, "succeeded": sum(outcomes),
            "assume_role_calls": proxy.calls["AssumeRole"]}


async def assume_role_calls_per_simulated_hour(world: servers.World, proxy: FaultProxy, hours: int) -> dict:
    """The daemon in this process on a clock moved by hand (moto's STS follows it), a minute at a time."""
    clock = FakeClock()
    original = moto.sts.models.utcnow
    moto.sts.models.utcnow = lambda: datetime.datetime.fromtimestamp(clock.now, datetime.UTC).replace(tzinfo=None)
    saved = dict(os.environ)
    os.environ.update(world.source.environ(), AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull,
                      AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    proxy.reset()
    try:
        role = RoleConfig(role_arn=scenario.ROLE_01_ARN, port=0, role_session_name="bench-hours")
        daemon = Daemon(ServeConfig(roles=(role,), region=scenario.REGION, sts_endpoint_url=world.sts_url), clock)
        task = await daemon.start_in_background()
        (state,) = daemon.refresher.states.values()
        start, calls, seen = clock.now, [], proxy.calls["AssumeRole"]
        for _ in range(hours * 60):
            clock.advance(60)
            await daemon.refresher.wait_for(lambda: state.next_attempt > clock.now)
            while proxy.calls["AssumeRole"] > seen:
                seen += 1
                calls.append(clock.now - start)
        remaining = [creds.expiration - clock.now for creds in [daemon.store.get(state.spec)] if creds]
        daemon.request_stop()
        await task
    finally:
        moto.sts.models.utcnow = original
        os.environ.clear()
        os.environ.update(saved)
    busiest = max((sum(1 for t in calls if s <= t < s + 3600) for s in calls), default=0)
    return {"simulated_hours": hours, "refresh_calls": len(calls), "per_hour": len(calls) / hours,
            "busiest_hour": busiest, "served_remaining_at_end_s": remaining[0] if remaining else None}
