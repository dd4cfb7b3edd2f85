"""The measurements under load, each side by side: two servers pinned to the server CPU, each loaded by its
own wrk pinned to the other CPU, in the same window; the ratio of requests completed is what compares.
The product always runs with its default flags on the event loop named, against baselines on that loop."""

from __future__ import annotations

import os
from contextlib import ExitStack

from . import servers
from .servers import Target, World
from .socket_table import idle_connections
from .tools import run_together, script, wrk_command

CLOSE = {"Connection": "close"}
HEADLINE_CONNECTIONS = 32


def _side_by_side(ours: Target, theirs: Target, connections: int, seconds: float,
                  headers: dict[str, str] | None = None) -> dict:
    """One window: both servers loaded at once; the product's figures and the baseline's. Both get the same
    request, the product's IMDSv2 token header included (a baseline ignores it but parses it, as the product
    does): otherwise the comparison would include parsing a shorter request."""
    request = {**ours.headers, **(headers or {})}
    mine, other = run_together([wrk_command(ours.url, connections, seconds, request),
                                wrk_command(theirs.url, connections, seconds, {**request, **theirs.headers})])
    return {"connections": connections, "product_run": ours.run, "baseline_run": theirs.run,
            "product_rps": mine["rps"], "baseline_rps": other["rps"],
            "ratio": mine["rps"] / other["rps"] if other["rps"] else None,
            "product_p50_ms": mine["p50_us"] / 1000, "product_p99_ms": mine["p99_us"] / 1000,
            "baseline_p99_ms": other["p99_us"] / 1000,
            "errors": sum(mine["errors"].values()), "baseline_errors": sum(other["errors"].values())}


def throughput(world: World, loop: str, connections: list[int], seconds: float, repeats: int,
               peers: bool) -> list[dict]:
    """Cached-credentials GET with keep-alive: the product against each aiohttp baseline on the same loop at
    every connection count; with `peers`, against nginx and moto too at the headline connection count."""
    rows = []
    with servers.product(world, loop) as product:
        body = servers.credentials_body(product)
        baselines = [(lambda: servers.aiohttp_baseline(world, "application", loop, body), connections),
                     (lambda: servers.aiohttp_baseline(world, "server", loop, body), connections)]
        if peers:
            baselines += [(lambda: servers.nginx_baseline(world, body), [HEADLINE_CONNECTIONS]),
                          (lambda: servers.moto_baseline(world), [HEADLINE_CONNECTIONS])]
        for start, counts in baselines:
            with start() as baseline:
                for count in counts:
                    for repeat in range(repeats):
                        rows.append({"loop": loop, "baseline": baseline.name, "repeat": repeat,
                                     **_side_by_side(product, baseline, count, seconds)})
    return rows


def loop_against_loop(world: World, seconds: float, repeats: int) -> list[dict]:
    """The product on uvloop against the product on asyncio (what the `fast` extra buys)."""
    with servers.product(world, "uvloop") as fast, servers.product(world, "asyncio") as plain:
        return [{"repeat": repeat, **_side_by_side(fast, plain, HEADLINE_CONNECTIONS, seconds)}
                for repeat in range(repeats)]


def fetches(world: World, loop: str, seconds: float, repeats: int) -> list[dict]:
    """Full IMDSv2 fetches (PUT token, GET role, GET credentials) per second, the product alone."""
    rows = []
    with servers.product(world, loop) as product:
        for repeat in range(repeats):
            (report,) = run_together([wrk_command(servers.base_url(product), 8, seconds, lua=script("sequence"),
                                                  threads=8)])
            rows.append({"loop": loop, "repeat": repeat, "run": product.run, "fetches_per_s": report["rps"] / 3,
                         "requests_per_s": report["rps"], "p99_ms": report["p99_us"] / 1000,
                         "errors": sum(report["errors"].values())})
    return rows


def socket_table_rows() -> int:
    rows = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, "rb") as file:
            rows += sum(1 for _ in file) - 1  # the header
    return rows


def allow_uid_close(world: World, loop: str, idle: int, seconds: float, repeats: int) -> list[dict]:
    """A new connection per request (`Connection: close`) with `--allow-uid` (a peer-uid lookup per
    connection) against the same without an allow-list, with `idle` other connections in the socket table."""
    rows = []
    with idle_connections(idle) as held, ExitStack() as stack:
        gated = stack.enter_context(servers.product(world, loop, "--allow-uid", str(os.getuid()),
                                                    name="metadata-proxy --allow-uid"))
        open_ = stack.enter_context(servers.product(world, loop))
        for repeat in range(repeats):
            rows.append({"loop": loop, "repeat": repeat, "idle_connections": held,
                         "socket_table_rows": socket_table_rows(),
                         **_side_by_side(gated, open_, HEADLINE_CONNECTIONS, seconds, CLOSE)})
    return rows


def flood(world: World, loop: str, seconds: float) -> dict:
    """wrk at full speed against the product alone at its default log level; the log lines it wrote."""
    with servers.product(world, loop) as product:
        before = product.log_lines()
        (report,) = run_together([wrk_command(product.url, HEADLINE_CONNECTIONS, seconds, product.headers)])
        lines = product.log_lines() - before
    return {"loop": loop, "seconds": seconds, "connections": HEADLINE_CONNECTIONS, "requests": report["requests"],
            "rps": report["rps"], "errors": sum(report["errors"].values()), "log_lines": lines,
            "run": product.run}
