"""No local user can deny the others: the uid is decided when a connection is accepted, refused users are
closed at once, each uid has a share of the connections, and the oldest idle connection makes room.

In-process tests tell users apart by the loopback address they connect from (127.0.0.2 is "user 1002"), the
one thing a test can choose without root; the tests as the real user `nobody` are in test_exhaustion.py."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from metadata_proxy.connections import ConnectionTable, descriptor_budget
from metadata_proxy.gate import HostCheck
from metadata_proxy.ledger import Ledger
from metadata_proxy.listeners import Endpoint, TrackedServer, bind_socket

BY_ADDRESS = {"127.0.0.1": 1001, "127.0.0.2": 1002, "127.0.0.3": 2000}
ANSWER_TIMEOUT = 30  # a safety net: a refused connection is closed at once, a served one answers at once


def uid_by_address(sock: socket.socket | None) -> int | None:
    assert sock is not None
    return BY_ADDRESS.get(sock.getpeername()[0])


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., object]]:
    runners: list[web.ServerRunner] = []

    async def start(table: ConnectionTable, allowed: frozenset[int] | None = None,
                    refused: list[int | None] | None = None) -> int:
        async def hello(request: web.BaseRequest) -> web.Response:
            return web.Response(text="hi")

        server = TrackedServer(hello, table, lambda: allowed, (refused if refused is not None else []).append,
                               uid_by_address, keepalive_timeout=30.0)
        runner = web.ServerRunner(server)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    yield start
    for runner in runners:
        await runner.cleanup()


async def connect(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One request on the connection; b"" if the server closed it instead of answering."""
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        await writer.drain()
        return await asyncio.wait_for(reader.read(1024), ANSWER_TIMEOUT)
    except ConnectionError:
        return b""


async def fetch(port: int, source: str = "127.0.0.1") -> bytes:
    reader, writer = await connect(port, source)
    try:
        return await ask(reader, writer)
    finally:
        writer.close()


# --- the table on its own ---

def test_a_uid_at_its_share_makes_room_among_its_own_connections_at_the_cap() -> None:
    table = ConnectionTable(cap=4, share=3)
    busy: set[str] = set()
    for name in ("a1", "a2", "a3"):
        assert table.admit(name, 2000, lambda c: c not in busy) == (True, None)
    assert table.admit("b1", 1001, lambda c: c not in busy) == (True, None)  # 4 of 4
    busy.add("a1")
    assert table.admit("a4", 2000, lambda c: c not in busy) == (True, "a2")  # the oldest idle one, not a busy one
    assert table.held_by(2000) == 3
    busy.update({"a3", "a4"})
    assert table.admit("a5", 2000, lambda c: c not in busy) == (False, None)  # all of its own are busy
    assert table.held_by(1001) == 1  # another uid's connection was not taken for it


def test_below_the_cap_one_user_may_use_it_all() -> None:
    """A host whose clients all run as one user (a service's worker pool, a burst of cold starts) gets the whole
    table while nobody else needs it; the share counts only once the table is full."""
    table = ConnectionTable(cap=10, share=3)
    for name in range(10):
        assert table.admit(name, 2000, lambda c: False) == (True, None)
    assert table.held_by(2000) == 10


def test_at_the_cap_the_heaviest_user_gives_way() -> None:
    table = ConnectionTable(cap=4, share=3)
    for name in ("a1", "a2", "a3"):
        table.admit(name, 2000, lambda c: True)
    assert table.admit("b1", 1001, lambda c: True) == (True, None)  # 4 of 4: the cap is reached, not exceeded
    assert table.admit("b2", 1001, lambda c: True) == (True, "a1")
    assert (len(table), table.held_by(2000), table.held_by(1001)) == (4, 2, 2)
    assert table.admit("c1", None, lambda c: c.startswith("c")) == (False, None)  # nobody idle to make room
    table.remove("a2")
    table.remove("a2")  # twice: nothing happens
    assert (len(table), table.held_by(2000)) == (3, 1)


def test_the_default_share_is_half_the_cap() -> None:
    table = ConnectionTable(cap=1024)
    assert table.share == 512
    for number in range(1024):
        assert table.admit(number, 2000, lambda c: True) == (True, None)  # alone, one user may use all of it
    assert table.admit(1024, 2000, lambda c: True) == (True, 0)  # at the cap, over its share: its own oldest goes
    assert table.admit("other", 1001, lambda c: True) == (True, 1)  # another user: the heaviest gives way
    assert table.admit("late", 2000, lambda c: False) == (False, None)  # nothing idle to make room with


@pytest.mark.parametrize(("cap", "share"), [(1, 1), (2, 1), (3, 1), (5, 2)])
def test_a_small_cap_still_gives_each_uid_a_share_of_at_least_one(cap: int, share: int) -> None:
    assert ConnectionTable(cap=cap).share == share


def test_an_explicit_share_is_the_one_applied() -> None:
    table = ConnectionTable(cap=4, share=1)
    for name, uid in (("b1", 1001), ("b2", 1001), ("a1", 2000), ("c1", 1002)):
        assert table.admit(name, uid, lambda c: True) == (True, None)
    assert table.admit("a2", 2000, lambda c: True) == (True, "a1")  # at a share of one: its own, not the heaviest's


def test_at_a_cap_of_two_each_user_keeps_one() -> None:
    table = ConnectionTable(cap=2)
    assert table.admit("a", 2000, lambda c: True) == (True, None)
    assert table.admit("b", 1001, lambda c: True) == (True, None)
    assert table.admit("b2", 1001, lambda c: True) == (True, "b")  # at its share of one: its own makes room


# --- the server: decided at accept ---

async def test_a_uid_just_outside_the_allow_list_is_closed_before_it_sends_anything(serve) -> None:
    refused: list[int | None] = []
    port = await serve(ConnectionTable(cap=10), allowed=frozenset({1001}), refused=refused)
    reader, writer = await connect(port, "127.0.0.2")
    assert await asyncio.wait_for(reader.read(), ANSWER_TIMEOUT) == b""  # closed without a request
    writer.close()
    assert await fetch(port, "127.0.0.4") == b""  # no uid known for it: undeterminable, denied
    assert (await fetch(port, "127.0.0.1")).startswith(b"HTTP/1.1 200")  # the allowed uid
    assert refused == [1002, None]


async def test_without_an_allow_list_an_undeterminable_user_is_served(serve) -> None:
    port = await serve(ConnectionTable(cap=10))
    assert (await fetch(port, "127.0.0.4")).startswith(b"HTTP/1.1 200")


async def test_one_user_holding_every_slot_does_not_lock_out_another(serve, caplog: pytest.LogCaptureFixture) -> None:
    """User 2000 opens 3x the cap in idle and half-sent (slowloris) connections; user 1001 is still served,
    and the flood costs one warning line."""
    table = ConnectionTable(cap=20)
    port = await serve(table)
    held = [await connect(port, "127.0.0.3") for _ in range(60)]
    for _, writer in held[::2]:
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    for attempt in range(5):
        assert (await fetch(port, "127.0.0.1")).startswith(b"HTTP/1.1 200"), attempt
    assert len(table) <= 20  # never over the cap
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "connection limit reached (20 in all, 10 per user)" in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]
    for _, writer in held:
        writer.close()


async def test_a_burst_of_one_users_cold_clients_is_served_whole(serve) -> None:
    """30 clients of one user open their connections at once, then ask (cap 40, share 20): every one is
    answered. (With the share enforced below the cap, the 21st connection closed the first.)"""
    port = await serve(ConnectionTable(cap=40))
    clients = [await connect(port, "127.0.0.3") for _ in range(30)]
    answers = await asyncio.gather(*(ask(reader, writer) for reader, writer in clients))
    assert [answer[:15] for answer in answers] == [b"HTTP/1.1 200 OK"] * 30
    for _, writer in clients:
        writer.close()


async def test_the_newest_is_refused_only_when_no_connection_is_idle(serve) -> None:
    """Busy connections are never closed to make room: with the cap of 2 held by two requests in progress, a
    third connection is refused, and served once one of them finishes."""
    release = asyncio.Event()
    started = asyncio.Queue()

    async def slow(request: web.BaseRequest) -> web.Response:
        await started.put(None)
        await release.wait()
        return web.Response(text="done")

    table = ConnectionTable(cap=2, share=2)
    server = TrackedServer(slow, table, uid_of=uid_by_address, keepalive_timeout=30.0)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        busy = [await connect(port, "127.0.0.3") for _ in range(2)]
        answers = [asyncio.create_task(ask(*connection)) for connection in busy]
        await started.get()
        await started.get()
        assert await fetch(port) == b""
        release.set()
        replies = [await answer for answer in answers]
        assert all(reply.startswith(b"HTTP/1.1 200") for reply in replies)
        for _, writer in busy:
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for _, writer in busy), return_exceptions=True)
        assert (await fetch(port)).startswith(b"HTTP/1.1 200")
    finally:
        await runner.cleanup()


async def test_a_tightened_allow_list_applies_to_the_next_request_of_an_open_connection() -> None:
    """The allow-list is read at accept and again per request: after a reload drops this uid (the list now
    holds only the uid next to it), the connection it already has gets 403."""
    me = os.geteuid()
    endpoint = Endpoint(bind_socket("127.0.0.1", 0), "http://127.0.0.1/")

    async def hello(request: web.BaseRequest) -> web.Response:
        return web.Response(text="hi")

    endpoint.routes, endpoint.allowed = hello, frozenset({me})
    await endpoint.start(HostCheck("127.0.0.1"), Ledger())
    try:
        reader, writer = await connect(endpoint.port)
        assert (await ask(reader, writer)).startswith(b"HTTP/1.1 200")
        endpoint.allowed = frozenset({me + 1})  # what a reload does
        assert (await ask(reader, writer)).startswith(b"HTTP/1.1 403")
        writer.close()
    finally:
        await endpoint.close()


BUDGET = """
import resource
from metadata_proxy.connections import descriptor_budget
print(descriptor_budget(), *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


@pytest.mark.parametrize(("soft", "hard", "expected"), [
    (100, 4096, "3072 4096 4096"),  # the soft limit is raised to the hard one; a quarter stays in reserve
    (1024, 1024, "768 1024 1024"),  # systemd's default when the hard limit is 1024 too
    (256, 256, "128 256 256"),  # a small limit still keeps 128 descriptors for the daemon's own use
])
def test_the_real_descriptor_limit_is_raised_and_the_cap_stays_below_it(soft: int, hard: int, expected: str) -> None:
    result = subprocess.run([sys.executable, "-c", BUDGET], capture_output=True, text=True, timeout=60,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    assert result.stdout.strip() == expected, result.stderr


INFINITY = resource.RLIM_INFINITY


@pytest.mark.parametrize(("soft", "hard", "raise_works", "limit", "cap"), [
    (100, 4096, True, (4096, 4096), 3072),
    (1001, 1001, True, (1001, 1001), 751),  # a quarter, rounded up, stays in reserve
    (256, 256, True, (256, 256), 128),
    (100, 100, True, (100, 100), 1),  # too few for any reserve: one connection still fits
    (129, 129, True, (129, 129), 1),
    (130, 130, True, (130, 130), 2),
    (1024, INFINITY, True, (INFINITY, INFINITY), 1024),  # no limit at all: the cap of 1024 connections
    (1024, INFINITY, False, (1024, INFINITY), 768),  # an infinite hard limit above fs.nr_open: the soft one stays
])
def test_the_descriptor_budget_for_each_limit(monkeypatch: pytest.MonkeyPatch, soft: int, hard: int,
                                              raise_works: bool, limit: tuple[int, int], cap: int) -> None:
    """The same rule under limits a test cannot set for real (an infinite hard limit, one the kernel refuses)."""
    current = [soft, hard]

    def setrlimit(which: int, values: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        if not raise_works:
            raise ValueError("not allowed to raise maximum limit")
        current[:] = values

    monkeypatch.setattr(resource, "getrlimit", lambda which: tuple(current) if which == resource.RLIMIT_NOFILE else
                        pytest.fail(f"unexpected getrlimit({which})"))
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    budget = descriptor_budget()
    assert (budget, type(budget), tuple(current)) == (cap, int, limit)
