"""The transparent endpoint's passthrough of instance metadata, against a stand-in IMDS on loopback: one
token for many requests, the immutable values cached, every answer bounded in time and size, and the
credential paths never forwarded."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from metadata_proxy.imds import normalize_path
from metadata_proxy.passthrough import RealImds

BODIES = {"/latest/meta-data/instance-id": b"i-0fedcba987654321", "/latest/user-data": b"#!/bin/sh\ntrue\n",
          "/latest/big": b"x" * (256 * 1024 + 1), "/latest/dynamic/large": bytes(range(256)) * 1024}


class StandIn:
    """Plays the real IMDS: IMDSv2 tokens required, every request counted, /latest/hang never answers."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.tokens: set[str] = set()
        self.released = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls[(request.method, request.path)] += 1
        if request.method == "PUT":
            token = f"real-imds-token-{len(self.tokens)}"
            self.tokens.add(token)
            return web.Response(text=token)
        if request.headers.get("X-aws-ec2-metadata-token") not in self.tokens:
            return web.Response(status=401)
        if request.path == "/latest/hang":
            await self.released.wait()
        body = BODIES.get(request.path)
        return web.Response(status=404) if body is None else web.Response(body=body)


Client = Callable[[RealImds], Awaitable[TestClient]]


@pytest.fixture
async def stand_in(aiohttp_server) -> tuple[StandIn, str]:  # type: ignore[no-untyped-def]
    imds = StandIn()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", imds.handle)
    server = await aiohttp_server(app)
    yield imds, str(server.make_url("")).rstrip("/")
    imds.released.set()


@pytest.fixture
async def through(aiohttp_raw_server, aiohttp_client) -> Client:  # type: ignore[no-untyped-def]
    """A client of an endpoint whose every request goes to the passthrough, as unknown paths do."""
    made: list[RealImds] = []

    async def make(real: RealImds) -> TestClient:
        made.append(real)

        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            return await real(request, normalize_path(request.raw_path))

        return await aiohttp_client(await aiohttp_raw_server(handler))

    yield make
    for real in made:
        await real.close()


async def test_immutable_values_are_fetched_once_and_the_rest_every_time(stand_in, through) -> None:
    imds, url = stand_in
    real = RealImds(url)
    client = await through(real)
    for _ in range(3):
        assert await (await client.get("/latest/meta-data/instance-id")).text() == "i-0fedcba987654321"
        assert await (await client.get("/latest/user-data")).text() == "#!/bin/sh\ntrue\n"
    assert imds.calls[("GET", "/latest/meta-data/instance-id")] == 1
    assert imds.calls[("GET", "/latest/user-data")] == 3
    assert imds.calls[("PUT", "/latest/api/token")] == 1  # one token for all of them


async def test_a_rejected_token_is_replaced_once(stand_in, through) -> None:
    imds, url = stand_in
    real = RealImds(url)
    client = await through(real)
    assert (await client.get("/latest/user-data")).status == 200
    imds.tokens.clear()  # the real IMDS forgot our token
    assert await (await client.get("/latest/user-data")).text() == "#!/bin/sh\ntrue\n"
    assert imds.calls[("PUT", "/latest/api/token")] == 2


async def test_an_answer_up_to_256_kib_arrives_whole(stand_in, through) -> None:
    _imds, url = stand_in
    reply = await (await through(RealImds(url))).get("/latest/dynamic/large")
    assert reply.status == 200 and await reply.read() == bytes(range(256)) * 1024


async def test_an_oversized_answer_is_a_502_not_part_of_it(stand_in, through) -> None:
    _imds, url = stand_in
    real = RealImds(url)
    reply = await (await through(real)).get("/latest/big")
    assert (reply.status, await reply.text()) == (502, "Bad Gateway: the instance metadata service did not answer")


async def test_a_hanging_imds_is_a_502_once_the_timeout_passes(stand_in, through) -> None:
    _imds, url = stand_in
    real = RealImds(url, timeout=aiohttp.ClientTimeout(total=0.5))
    reply = await (await through(real)).get("/latest/hang")
    assert reply.status == 502


async def test_an_unreachable_imds_is_a_502(through, unused_tcp_port) -> None:  # type: ignore[no-untyped-def]
    real = RealImds(f"http://127.0.0.1:{unused_tcp_port}")
    assert (await (await through(real)).get("/latest/meta-data/instance-id")).status == 502


@pytest.mark.parametrize("path", ["/latest/meta-data/iam/security-credentials/role-02",
                                  "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
                                  "/latest/meta-data/%69am/info", "/2020-10-27/meta-data/IAM/info"])
async def test_credential_paths_are_never_forwarded(stand_in, through, path: str) -> None:
    imds, url = stand_in
    real = RealImds(url)
    assert (await (await through(real)).get(path)).status == 404
    assert not imds.calls


async def test_the_daemons_own_token_is_never_logged(stand_in, through, caplog: pytest.LogCaptureFixture) -> None:
    imds, url = stand_in
    caplog.set_level(logging.DEBUG)
    real = RealImds(url, timeout=aiohttp.ClientTimeout(total=0.5))
    client = await through(real)
    await client.get("/latest/user-data")
    await client.get("/latest/hang")  # a logged failure
    assert imds.tokens and "did not answer /latest/hang" in caplog.text
    assert not [token for token in imds.tokens if token in caplog.text]
