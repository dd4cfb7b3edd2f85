"""What is measured around the serving path: start-up, memory over a million requests, the AWS CLI end to
end, and the cost of the container health check. The product always runs with its default flags."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from metadata_proxy import scenario
from tests.support.faultproxy import FaultProxy
from tests.support.notify import NotifySocket
from tests.support.processes import DaemonProcess, client_env, daemon_env

from . import servers
from .servers import World
from .tools import free_port, rss_mb, run_together, wrk_command

BIN = Path(sys.executable).parent
WATCHED_MODULES = ("boto3", "botocore", "aiohttp", "prometheus_client")


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def startup(world: World, proxy: FaultProxy, loop: str, repeats: int) -> list[dict]:
    """Process start to the first served credentials (the ready line) and to READY=1, with STS slowed."""
    rows = []
    for latency in (0.010, 0.200):
        proxy.latency = latency
        for _ in range(repeats):
            notify = NotifySocket(world.home)
            args = servers.product_args(world, free_port(), loop)
            run = servers.record_product(world, "metadata-proxy", loop, args)
            started = time.perf_counter()
            process = DaemonProcess(args, {**daemon_env(world.home, **world.source.environ()),
                                           "NOTIFY_SOCKET": notify.path})
            try:
                if not process.wait_ready():
                    raise RuntimeError(f"metadata-proxy did not start: {process.stderr[-2000:]}")
                serving = time.perf_counter() - started
                notify.wait_for("READY", "1")
                ready = time.perf_counter() - started
            finally:
                process.stop()
                notify.close()
                os.unlink(notify.path)
            rows.append({"run": run["id"], "sts_latency_ms": latency * 1000, "to_serving_s": serving,
                         "to_ready_s": ready})
    proxy.latency = 0.0
    return rows


def memory(world: World, loop: str, checkpoints: list[int], seconds: float) -> list[dict]:
    """Resident memory at start and after each checkpoint's number of cached-credential requests."""
    rows = []
    with servers.product(world, loop) as product:
        rows.append({"run": product.run, "requests": 0, "rss_mb": rss_mb(product.pid)})
        done = 0
        for checkpoint in checkpoints:
            while done < checkpoint:
                (report,) = run_together([wrk_command(product.url, 32, seconds, product.headers)])
                done += report["requests"]
            rows.append({"run": product.run, "requests": done, "rss_mb": rss_mb(product.pid)})
    return rows


def aws_cli(world: World, loop: str, repeats: int) -> dict:
    """`aws s3 ls` through the daemon vs with static keys in the environment (same credentials)."""
    command = [str(BIN / "aws"), "s3", "ls", "s3://foobar/", "--endpoint-url", world.moto_url,
               "--region", scenario.REGION]
    timings: dict[str, list[float]] = {"through_daemon": [], "static_env": []}
    with servers.product(world, loop) as product:
        doc = json.loads(servers.credentials_body(product))
        environments = {"through_daemon": client_env(world.home,
                                                     AWS_EC2_METADATA_SERVICE_ENDPOINT=servers.base_url(product)),
                        "static_env": client_env(world.home, AWS_ACCESS_KEY_ID=doc["AccessKeyId"],
                                                 AWS_SECRET_ACCESS_KEY=doc["SecretAccessKey"],
                                                 AWS_SESSION_TOKEN=doc["Token"])}
        for _ in range(repeats):
            for name, env in environments.items():
                started = time.perf_counter()
                result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
                if result.returncode != 0:
                    raise RuntimeError(f"aws s3 ls ({name}) failed: {result.stderr[-500:]}")
                timings[name].append(time.perf_counter() - started)
    summary: dict = {"run": product.run, **{name: spread(values) for name, values in timings.items()}}
    summary["difference_s"] = summary["through_daemon"]["median"] - summary["static_env"]["median"]
    return summary


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def healthcheck(world: World, loop: str, repeats: int) -> dict:
    """`metadata-proxy healthcheck` (the Docker HEALTHCHECK) against a running daemon: which of the daemon's
    libraries it imports (Python's own import log), its exit status, and the CPU time one check costs."""
    with servers.product(world, loop) as product:
        command = [str(BIN / "metadata-proxy"), "healthcheck", "--url", servers.base_url(product)]
        env = client_env(world.home)
        traced = subprocess.run(command, env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, capture_output=True,
                                text=True, timeout=120)
        # lines like "import time:       512 |       1234 |   boto3.session"; top-level names are enough
        imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in traced.stderr.splitlines()
                    if line.startswith("import time:") and "|" in line}
        cpu = []
        for _ in range(repeats):
            before = _children_cpu()
            subprocess.run(command, env=env, capture_output=True, timeout=120)
            cpu.append(_children_cpu() - before)
    return {"run": product.run, "command": command[1:], "exit_status": traced.returncode,
            "watched": list(WATCHED_MODULES), "imported": [name for name in WATCHED_MODULES if name in imported],
            "cpu_s": spread(cpu)}
