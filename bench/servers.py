"""The servers under load: the product and its baselines, each a process pinned to the server CPU.

Every server answers the same credentials document on a path under /latest/meta-data/iam/
security-credentials/; a `Target` says how wrk must ask for it (URL and headers). Every server started is
recorded in `World.runs` (event loop, log level, the exact flags), and the product's log goes to a file so
that its lines can be counted and writing them never waits on a reader.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from metadata_proxy import scenario
from metadata_proxy.config import ServeConfig
from tests.support.http import get, token
from tests.support.processes import READY_PREFIX, START_TIMEOUT, daemon_env

from .tools import SERVER_CPU, free_port, pinned, wait_for_port

BENCH = Path(__file__).resolve().parent
CREDENTIALS = "/latest/meta-data/iam/security-credentials/role-01"
LOOPS = ("asyncio", "uvloop")
DEFAULT_LOG_LEVEL = next(f.default for f in dataclasses.fields(ServeConfig) if f.name == "log_level")


@dataclass
class Target:
    name: str
    process: subprocess.Popen
    url: str  # what wrk requests
    headers: dict[str, str] = field(default_factory=dict)
    log: Path | None = None  # the product's stderr
    run: int = 0  # its entry in World.runs

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_lines(self) -> int:
        if self.log is None:
            return 0
        with self.log.open("rb") as file:
            return sum(1 for _ in file)


@dataclass
class World:
    moto_url: str
    sts_url: str
    source: scenario.SourceCredentials
    home: Path
    runs: list[dict] = field(default_factory=list)

    def record(self, **run: object) -> dict:
        entry = {"id": len(self.runs) + 1, **run}
        self.runs.append(entry)
        return entry


def product_args(world: World, port: int, loop: str, *extra: str) -> list[str]:
    """The product as users run it: default flags but for the role, the port, where STS is, and the event
    loop (its default is "uvloop when installed": named here so every run says which it got)."""
    return ["serve", "--role-arn", scenario.ROLE_01_ARN, "--port", str(port), "--region", scenario.REGION,
            "--sts-endpoint-url", world.sts_url, "--event-loop", loop, *extra]


def record_product(world: World, name: str, loop: str, args: list[str]) -> dict:
    """A product run in World.runs: its event loop, its log level (and whether that is the default), its flags."""
    given = "--log-level" in args
    return world.record(server=name, event_loop=loop, log_level=args[args.index("--log-level") + 1] if given
                        else DEFAULT_LOG_LEVEL, log_level_is_default=not given, flags=args[1:])


def _wait_ready(process: subprocess.Popen) -> str | None:
    """The IMDS endpoint from the product's export line; None if it ended (or hung) before printing it."""
    timer = threading.Timer(START_TIMEOUT, process.kill)  # a safety net for a hung start, not a measurement
    timer.start()
    try:
        for line in process.stdout:
            if line.startswith(READY_PREFIX):
                return line.removeprefix(READY_PREFIX).strip()
        return None
    finally:
        timer.cancel()


@contextlib.contextmanager
def product(world: World, loop: str, *extra: str, name: str = "metadata-proxy") -> Iterator[Target]:
    """metadata-proxy serve, pinned to the server CPU; with a valid IMDSv2 token for wrk to send."""
    args = product_args(world, free_port(), loop, *extra)
    run = record_product(world, name, loop, args)
    log = world.home / f"product-{run['id']}.log"
    run["log"] = log.name
    with log.open("w") as stderr:
        process = subprocess.Popen(pinned(SERVER_CPU, [sys.executable, "-m", "metadata_proxy", *args]), text=True,
                                   env=daemon_env(world.home, **world.source.environ()), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=stderr)
    target = Target(name, process, "", log=log, run=run["id"])
    try:
        url = _wait_ready(process)
        if url is None:
            raise RuntimeError(f"metadata-proxy did not start: {log.read_text()[-2000:]}")
        target.url = url.rstrip("/") + CREDENTIALS
        target.headers = {"X-aws-ec2-metadata-token": token(url)}
        yield target
    finally:
        process.terminate()
        process.wait(timeout=START_TIMEOUT)
        run["log_lines"] = target.log_lines()


def base_url(target: Target) -> str:
    return target.url.removesuffix(CREDENTIALS) + "/"


def credentials_body(target: Target) -> bytes:
    return get(base_url(target), CREDENTIALS, target.headers["X-aws-ec2-metadata-token"]).body


@contextlib.contextmanager
def _process(world: World, name: str, command: list[str], port: int, url: str, loop: str | None = None,
             headers: dict[str, str] | None = None, **kwargs) -> Iterator[Target]:
    run = world.record(server=name, event_loop=loop, command=command)
    process = subprocess.Popen(pinned(SERVER_CPU, command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               **kwargs)
    try:
        wait_for_port(port, process)
        yield Target(name, process, url, headers or {}, run=run["id"])
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def aiohttp_baseline(world: World, kind: str, loop: str, body: bytes) -> Iterator[Target]:
    """A bare aiohttp handler returning the same bytes: kind is "application" (web.Application, the
    framework ceiling) or "server" (the low-level web.Server the product is built on: its ceiling)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as file:
        file.write(body)
        file.flush()
        port = free_port()
        command = [sys.executable, str(BENCH / "baseline_app.py"), kind, loop, str(port), file.name]
        name = {"application": "aiohttp web.Application", "server": "aiohttp web.Server"}[kind]
        with _process(world, name, command, port, f"http://127.0.0.1:{port}{CREDENTIALS}", loop) as target:
            yield target


@contextlib.contextmanager
def nginx_baseline(world: World, body: bytes) -> Iterator[Target]:
    """The machine's loopback ceiling: nginx, one worker, serving the same bytes as a static file."""
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as prefix:
        root = Path(prefix, "root")
        (root / CREDENTIALS.lstrip("/")).parent.mkdir(parents=True)
        (root / CREDENTIALS.lstrip("/")).write_bytes(body)
        port = free_port()
        Path(prefix, "nginx.conf").write_text(f"""
worker_processes 1;
error_log {prefix}/error.log;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type text/plain;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
}}""")
        command = ["nginx", "-p", prefix, "-c", f"{prefix}/nginx.conf", "-g", "daemon off; master_process off;"]
        with _process(world, "nginx static file", command, port, f"http://127.0.0.1:{port}{CREDENTIALS}") as target:
            yield target


@contextlib.contextmanager
def moto_baseline(world: World) -> Iterator[Target]:
    """A Python peer: moto's own IMDS-like credentials route (werkzeug, threaded)."""
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    with _process(world, "moto IMDS route", [str(moto), "-H", "127.0.0.1", "-p", str(port)], port,
                  f"http://127.0.0.1:{port}/latest/meta-data/iam/security-credentials/default-role",
                  headers={"Host": "169.254.169.254"},
                  env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}) as target:
        yield target
