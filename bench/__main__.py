"""`python -m bench`: speed, STS economy and memory of metadata-proxy, side by side with baselines.

    python -m bench                 # the full run (about 15 minutes), results in bench-results/<time>/
    python -m bench --smoke         # seconds: every measurement once, tiny; what CI runs
    python -m bench --out DIR --repeats 5 --seconds 10

Writes results.json, results.md (the tables of docs/performance.md) and PNG plots. Needs wrk, nginx and
taskset (installed from Debian's packages when run as root) and the `bench` extra (matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from moto.server import ThreadedMotoServer

from metadata_proxy import scenario
from tests.support.faultproxy import FaultProxy
from tests.support.notify import NotifySocket
from tests.support.processes import DaemonProcess, client_env

from . import report, targets
from .sts_economy import assume_role_calls_per_simulated_hour, cold_clients
from .tools import (
    LOAD_CPU,
    SERVER_CPU,
    ensure_tools,
    free_port,
    rss_mb,
    run_together,
    script,
    wrk_command,
)


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def throughput(world: targets.World, home: Path, connections: list[int], seconds: float, repeats: int) -> list[dict]:
    """Cached credentials GET: the product and each baseline loaded in the same window."""
    rows = []
    with targets.product(world, home) as product:
        body = targets.credentials_body(product)
        for make in (targets.aiohttp_baseline, targets.nginx_baseline, targets.moto_baseline):
            with (make(body) if make is not targets.moto_baseline else make()) as baseline:
                for count in connections:
                    for repeat in range(repeats):
                        ours, theirs = run_together([wrk_command(product.url, count, seconds, product.headers),
                                                     wrk_command(baseline.url, count, seconds, baseline.headers)])
                        rows.append({"baseline": baseline.name, "connections": count, "repeat": repeat,
                                     "product_rps": ours["rps"], "baseline_rps": theirs["rps"],
                                     "ratio": ours["rps"] / theirs["rps"] if theirs["rps"] else None,
                                     "product_p50_ms": ours["p50_us"] / 1000, "product_p99_ms": ours["p99_us"] / 1000,
                                     "baseline_p99_ms": theirs["p99_us"] / 1000,
                                     "errors": sum(ours["errors"].values())})
    return rows


def sequence_and_close(world: targets.World, home: Path, seconds: float, repeats: int) -> dict:
    """Full IMDSv2 fetches (PUT + 2 GETs) per second, and requests per second with Connection: close, both
    side by side with the aiohttp baseline (which answers the close case on the same bytes)."""
    results: dict[str, list[dict]] = {"sequence": [], "connection_close": []}
    with targets.product(world, home) as product:
        base = product.url.removesuffix(targets.CREDENTIALS) + "/"
        body = targets.credentials_body(product)
        with targets.aiohttp_baseline(body) as baseline:
            for _ in range(repeats):
                (run,) = run_together([wrk_command(base, 8, seconds, lua=script("sequence"), threads=8)])
                results["sequence"].append({"fetches_per_s": run["rps"] / 3, "requests_per_s": run["rps"],
                                            "p99_ms": run["p99_us"] / 1000, "errors": sum(run["errors"].values())})
                close = {"Connection": "close"}
                ours, theirs = run_together([wrk_command(product.url, 32, seconds, {**product.headers, **close}),
                                             wrk_command(baseline.url, 32, seconds, close)])
                results["connection_close"].append({"product_rps": ours["rps"], "baseline_rps": theirs["rps"],
                                                    "ratio": ours["rps"] / theirs["rps"],
                                                    "errors": sum(ours["errors"].values())})
    return results


def startup(world: targets.World, proxy: FaultProxy, home: Path, repeats: int) -> list[dict]:
    """Process start to the first served credentials (the ready line) and to READY=1, with STS slowed."""
    rows = []
    for latency in (0.010, 0.200):
        proxy.latency = latency
        for _ in range(repeats):
            notify = NotifySocket(Path(home))
            started = time.perf_counter()
            process = DaemonProcess(targets.product_args(world, free_port()),
                                    {**client_env(home, **world.source.environ()), "AWS_EC2_METADATA_DISABLED": "true",
                                     "NOTIFY_SOCKET": notify.path})
            try:
                assert process.wait_ready(), process.stderr
                serving = time.perf_counter() - started
                notify.wait_for("READY", "1")
                ready = time.perf_counter() - started
            finally:
                process.stop()
                notify.close()
                os.unlink(notify.path)
            rows.append({"sts_latency_ms": latency * 1000, "to_serving_s": serving, "to_ready_s": ready})
    proxy.latency = 0.0
    return rows


def memory(world: targets.World, home: Path, checkpoints: list[int], seconds: float) -> list[dict]:
    """Resident memory at start and after each checkpoint's number of cached-credential requests."""
    rows = []
    with targets.product(world, home) as product:
        rows.append({"requests": 0, "rss_mb": rss_mb(product.pid)})
        done = 0
        for checkpoint in checkpoints:
            while done < checkpoint:
                (run,) = run_together([wrk_command(product.url, 32, seconds, product.headers)])
                done += run["requests"]
            rows.append({"requests": done, "rss_mb": rss_mb(product.pid)})
    return rows


def aws_cli(world: targets.World, home: Path, repeats: int) -> dict:
    """`aws s3 ls` through the daemon vs with static keys in the environment (same credentials)."""
    aws = str(Path(sys.executable).parent / "aws")
    command = [aws, "s3", "ls", "s3://foobar/", "--endpoint-url", world.moto_url, "--region", scenario.REGION]
    timings: dict[str, list[float]] = {"through_daemon": [], "static_env": []}
    with targets.product(world, home) as product:
        base = product.url.removesuffix(targets.CREDENTIALS) + "/"
        doc = json.loads(targets.credentials_body(product))
        environments = {"through_daemon": client_env(home, AWS_EC2_METADATA_SERVICE_ENDPOINT=base),
                        "static_env": client_env(home, AWS_ACCESS_KEY_ID=doc["AccessKeyId"],
                                                 AWS_SECRET_ACCESS_KEY=doc["SecretAccessKey"],
                                                 AWS_SESSION_TOKEN=doc["Token"])}
        for _ in range(repeats):
            for name, env in environments.items():
                started = time.perf_counter()
                result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
                if result.returncode != 0:
                    raise RuntimeError(f"aws s3 ls ({name}) failed: {result.stderr[-500:]}")
                timings[name].append(time.perf_counter() - started)
    summary = {name: spread(values) for name, values in timings.items()}
    summary["difference_s"] = summary["through_daemon"]["median"] - summary["static_env"]["median"]
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="every measurement once and tiny (CI)")
    parser.add_argument("--out", type=Path, default=None, help="result folder (default bench-results/<time>)")
    parser.add_argument("--repeats", type=int, default=None, help="windows per measurement (default 3)")
    parser.add_argument("--seconds", type=float, default=None, help="length of one window (default 5)")
    args = parser.parse_args()
    smoke = args.smoke
    repeats = args.repeats or (1 if smoke else 3)
    seconds = args.seconds or (1 if smoke else 5)
    connections = [1, 32] if smoke else [1, 8, 32, 128]
    checkpoints = [2_000, 10_000] if smoke else [200_000, 1_000_000]
    out = args.out or Path("bench-results", time.strftime("%Y%m%dT%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)

    ensure_tools()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(LOAD_CPU)})  # moto, the fault proxy and this runner stay off the server CPU
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "platform": platform.platform(), "server_cpu": SERVER_CPU, "load_cpu": LOAD_CPU},
                     "settings": {"smoke": smoke, "repeats": repeats, "seconds": seconds, "connections": connections}}
    with ExitStack() as stack:
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        stack.callback(moto.stop)
        host, port = moto.get_host_and_port()
        moto_url = f"http://{host}:{port}"
        proxy = FaultProxy(host, port).start()
        stack.callback(proxy.stop)
        world = targets.World(moto_url, proxy.url, scenario.build_world(moto_url))
        home = out / "home"
        home.mkdir(exist_ok=True)
        steps = [
            ("throughput", lambda: throughput(world, home, connections, seconds, repeats)),
            ("fetches", lambda: sequence_and_close(world, home, seconds, repeats)),
            ("cold_clients", lambda: cold_clients(world, proxy, home, 100 if smoke else 1000)),
            ("simulated_hours", lambda: asyncio.run(assume_role_calls_per_simulated_hour(world, proxy,
                                                                                         2 if smoke else 12))),
            ("startup", lambda: startup(world, proxy, home, 1 if smoke else 5)),
            ("memory", lambda: memory(world, home, checkpoints, seconds)),
            ("aws_cli", lambda: aws_cli(world, home, 1 if smoke else 5)),
        ]
        for name, measure in steps:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            results[name] = measure()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(report.markdown(results))
    report.plots(results, out)
    print(f"bench: results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
