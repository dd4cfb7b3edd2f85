"""`python -m bench`: speed, log volume, STS economy and memory of metadata-proxy, side by side with baselines.

    python -m bench                     # the full run (about 15 minutes), results in bench-results/<time>/
    python -m bench --smoke             # under a minute: every measurement once and tiny; what CI runs
    python -m bench --loop asyncio      # one event loop only (default: both, each against its own baselines)
    python -m bench --out docs/perf     # then `python -m bench.report` regenerates docs/performance.md

The product always runs with its default flags (the event loop named explicitly). Writes results.json (every
figure, the commit it measured, every server started with its flags, and the verdict of every target),
results.md and PNG plots. Needs wrk, nginx and taskset (installed from Debian's packages when run as root)
and the `bench` extra (matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from moto.server import ThreadedMotoServer

from metadata_proxy import scenario
from tests.support.faultproxy import FaultProxy

from . import goals, lifecycle, load, plots, report
from .provenance import provenance
from .servers import LOOPS, World
from .sts_economy import assume_role_calls_per_simulated_hour, cold_clients
from .tools import LOAD_CPU, SERVER_CPU, ensure_tools


def settings(args: argparse.Namespace) -> dict:
    smoke = args.smoke
    loops = list(LOOPS) if args.loop == "both" else [args.loop]
    # the loop `serve` picks by default (uvloop when installed), for the measurements that need only one
    default = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return {"smoke": smoke, "loops": loops, "single_loop": default if default in loops else loops[0],
            "repeats": args.repeats or (1 if smoke else 5), "seconds": args.seconds or (1 if smoke else 5),
            "connections": [load.HEADLINE_CONNECTIONS] if smoke else [1, 8, load.HEADLINE_CONNECTIONS, 128],
            "idle_connections": args.idle_connections or (1_000 if smoke else 10_000),
            "flood_seconds": 2 if smoke else 10,
            "memory_checkpoints": [2_000, 10_000] if smoke else [200_000, 1_000_000],
            "cold_clients": 100 if smoke else 1000, "simulated_hours": 2 if smoke else 12,
            "process_repeats": 1 if smoke else 5, "server_cpu": SERVER_CPU, "load_cpu": LOAD_CPU}


def steps(s: dict, world: World, proxy: FaultProxy) -> list[tuple[str, Callable[[], object]]]:
    repeats, seconds, single = s["repeats"], s["seconds"], s["single_loop"]
    out: list[tuple[str, Callable[[], object]]] = []
    for loop in s["loops"]:
        out += [("throughput", lambda loop=loop: load.throughput(world, loop, s["connections"], seconds, repeats,
                                                                 peers=True)),
                ("allow_uid_close", lambda loop=loop: load.allow_uid_close(world, loop, s["idle_connections"],
                                                                           seconds, repeats)),
                ("flood", lambda loop=loop: [load.flood(world, loop, s["flood_seconds"])]),
                ("fetches", lambda loop=loop: load.fetches(world, loop, seconds, repeats))]
    if len(s["loops"]) > 1:
        out.append(("loop_against_loop", lambda: load.loop_against_loop(world, seconds, repeats)))
    return [*out,
            ("cold_clients", lambda: cold_clients(world, proxy, single, s["cold_clients"])),
            ("simulated_hours", lambda: asyncio.run(assume_role_calls_per_simulated_hour(world, proxy,
                                                                                         s["simulated_hours"]))),
            ("startup", lambda: lifecycle.startup(world, proxy, single, s["process_repeats"])),
            ("memory", lambda: lifecycle.memory(world, single, s["memory_checkpoints"], seconds)),
            ("aws_cli", lambda: lifecycle.aws_cli(world, single, s["process_repeats"])),
            ("healthcheck", lambda: lifecycle.healthcheck(world, single, s["process_repeats"]))]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="every measurement once and tiny (CI)")
    parser.add_argument("--loop", choices=[*LOOPS, "both"], default="both", help="event loop(s) to measure")
    parser.add_argument("--out", type=Path, default=None, help="result folder (default bench-results/<time>)")
    parser.add_argument("--repeats", type=int, default=None, help="windows per measurement (default 5)")
    parser.add_argument("--seconds", type=float, default=None, help="length of one window (default 5)")
    parser.add_argument("--idle-connections", type=int, default=None,
                        help="idle connections in the socket table for the --allow-uid run (default 10000)")
    args = parser.parse_args()
    s = settings(args)
    out = args.out or Path("bench-results", time.strftime("%Y%m%dT%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)

    ensure_tools()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(LOAD_CPU)})  # moto, the fault proxy and this runner stay off the server CPU
    results: dict = {"provenance": provenance(out), "settings": s}
    with ExitStack() as stack:
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        stack.callback(moto.stop)
        host, port = moto.get_host_and_port()
        moto_url = f"http://{host}:{port}"
        proxy = FaultProxy(host, port).start()
        stack.callback(proxy.stop)
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-home-")))  # and the logs
        world = World(moto_url, proxy.url, scenario.build_world(moto_url), home)
        for name, measure in steps(s, world, proxy):
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            value = measure()
            if isinstance(value, list):
                results.setdefault(name, []).extend(value)
            else:
                results[name] = value
    results["runs"] = world.runs
    results["verdicts"] = goals.verdicts(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(report.results_markdown(results))
    plots.draw(results, out)
    for verdict in results["verdicts"]:
        state = {True: "met", False: "NOT MET", None: "not measured"}[verdict["met"]]
        print(f"bench: {state:>12}  {verdict['goal']}: {verdict['measured']}", file=sys.stderr)
    print(f"bench: results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
