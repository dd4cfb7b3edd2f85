"""The targets the benchmark checks, and their verdicts computed from a results file.

A verdict is never written by hand: `verdicts(results)` reads the measured figures (medians over the
repeated windows) and compares each with its limit. A target whose measurement is not in the results (say,
uvloop when only asyncio was run) gets `met: None`, not a pass.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from .load import HEADLINE_CONNECTIONS
from .servers import LOOPS

FLOOD_LINES = 36  # "at most a few dozen log lines" under a flood, at the default log level
HEAVY_MODULES = ("boto3", "aiohttp")  # what the healthcheck, run every 30 s, must not import


@dataclass(frozen=True)
class Goal:
    key: str
    target: str
    limit: float
    at_least: bool  # True: measured >= limit; False: measured <= limit
    measure: Callable[[dict], tuple[float, dict] | None]  # (value, conditions), None when not measured


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _headline(loop: str, baseline: str, field: str) -> Callable[[dict], tuple[float, dict] | None]:
    def measure(results: dict) -> tuple[float, dict] | None:
        rows = [r for r in results.get("throughput", []) if r["loop"] == loop and r["baseline"] == baseline
                and r["connections"] == HEADLINE_CONNECTIONS]
        value = _median([r[field] for r in rows if r[field] is not None])
        return None if value is None else (value, {"windows": len(rows), "connections": HEADLINE_CONNECTIONS})
    return measure


def _allow_uid(loop: str) -> Callable[[dict], tuple[float, dict] | None]:
    def measure(results: dict) -> tuple[float, dict] | None:
        rows = [r for r in results.get("allow_uid_close", []) if r["loop"] == loop]
        value = _median([r["ratio"] for r in rows if r["ratio"] is not None])
        if value is None:
            return None
        return value, {"windows": len(rows), "idle_connections": rows[0]["idle_connections"],
                       "connections": rows[0]["connections"]}
    return measure


def _flood(loop: str) -> Callable[[dict], tuple[float, dict] | None]:
    def measure(results: dict) -> tuple[float, dict] | None:
        runs = [r for r in results.get("flood", []) if r["loop"] == loop]
        if not runs:
            return None
        return runs[0]["log_lines"], {"seconds": runs[0]["seconds"], "requests": runs[0]["requests"]}
    return measure


def _healthcheck(results: dict) -> tuple[float, dict] | None:
    check = results.get("healthcheck")
    if check is None:
        return None
    heavy = [name for name in HEAVY_MODULES if name in check["imported"]]
    return len(heavy), {"imported": heavy, "exit_status": check["exit_status"]}


def _single(path: tuple[str, ...], conditions: tuple[str, ...] = ()) -> Callable[[dict], tuple[float, dict] | None]:
    def measure(results: dict) -> tuple[float, dict] | None:
        value = results
        for key in path:
            if key not in value:
                return None
            value = value[key]
        return value, {name: results[path[0]][name] for name in conditions}
    return measure


def _fetches(results: dict) -> tuple[float, dict] | None:
    rows = results.get("fetches", [])
    value = _median([r["fetches_per_s"] for r in rows])
    return None if value is None else (value, {"windows": len(rows), "loops": sorted({r["loop"] for r in rows})})


def _cold_served(results: dict) -> tuple[float, dict] | None:
    cold = results.get("cold_clients")
    return None if cold is None else (cold["succeeded"] / cold["clients"], {"clients": cold["clients"]})


def _rss_growth(results: dict) -> tuple[float, dict] | None:
    memory = results.get("memory", [])
    if len(memory) < 2:
        return None
    return memory[-1]["rss_mb"] - memory[-2]["rss_mb"], {"between_requests": [memory[-2]["requests"],
                                                                               memory[-1]["requests"]]}


def goals() -> list[Goal]:
    per_loop = []
    for loop in LOOPS:
        per_loop += [
            Goal(f"{loop}: vs web.Application", f"default flags on {loop}: cached-credentials GET at "
                 f"{HEADLINE_CONNECTIONS} connections >= 1.0x a bare aiohttp web.Application on {loop}", 1.0, True,
                 _headline(loop, "aiohttp web.Application", "ratio")),
            Goal(f"{loop}: p99", f"default flags on {loop}: p99 latency at {HEADLINE_CONNECTIONS} connections "
                 "<= 10 ms", 10.0, False, _headline(loop, "aiohttp web.Application", "product_p99_ms")),
            Goal(f"{loop}: vs web.Server", f"default flags on {loop}: cached-credentials GET at "
                 f"{HEADLINE_CONNECTIONS} connections >= 0.85x a bare aiohttp web.Server on {loop}", 0.85, True,
                 _headline(loop, "aiohttp web.Server", "ratio")),
            Goal(f"{loop}: --allow-uid", f"on {loop}, Connection: close, a crowded socket table: --allow-uid "
                 ">= 0.8x the same without an allow-list", 0.8, True, _allow_uid(loop)),
            Goal(f"{loop}: flood", f"on {loop}, default log level, wrk at full speed: at most {FLOOD_LINES} log "
                 "lines", FLOOD_LINES, False, _flood(loop)),
        ]
    return [*per_loop,
            Goal("healthcheck", "`metadata-proxy healthcheck` imports neither boto3 nor aiohttp (how many of them)",
                 0, False, _healthcheck),
            Goal("fetches", "full IMDSv2 fetches per second (token PUT + role GET + credentials GET), "
                 "8 connections, the product alone", 3000, True, _fetches),
            Goal("cold clients", "AssumeRole calls for a crowd of concurrent cold clients", 1, False,
                 _single(("cold_clients", "assume_role_calls"), ("clients", "succeeded"))),
            Goal("cold clients served", "share of that crowd that got credentials", 1.0, True, _cold_served),
            Goal("per hour", "AssumeRole calls per hour with one-hour sessions", 3, False,
                 _single(("simulated_hours", "per_hour"), ("simulated_hours", "busiest_hour"))),
            Goal("memory", "resident memory growth between the last two checkpoints, MB", 5.0, False,
                 _rss_growth)]


def verdicts(results: dict) -> list[dict]:
    out = []
    for goal in goals():
        measured = goal.measure(results)
        value, conditions = measured if measured is not None else (None, {})
        met = None if value is None else (value >= goal.limit if goal.at_least else value <= goal.limit)
        out.append({"goal": goal.key, "target": goal.target, "limit": goal.limit,
                    "comparison": ">=" if goal.at_least else "<=", "measured": value, "met": met,
                    "conditions": conditions})
    return out
