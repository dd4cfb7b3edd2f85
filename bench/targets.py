"""The servers under load: the product and its three baselines, each a process pinned to the server CPU.

Every target answers the same credentials document on a path under /latest/meta-data/iam/
security-credentials/; `request` says how wrk must ask for it (URL and headers).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from metadata_proxy import scenario
from tests.support.http import get, token
from tests.support.processes import DaemonProcess, daemon_env

from .tools import SERVER_CPU, free_port, pinned, wait_for_port

BENCH = Path(__file__).resolve().parent
CREDENTIALS = "/latest/meta-data/iam/security-credentials/role-01"


@dataclass
class Target:
    name: str
    process: subprocess.Popen
    url: str  # what wrk requests
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class World:
    moto_url: str
    sts_url: str
    source: scenario.SourceCredentials


def product_args(world: World, port: int, *extra: str) -> list[str]:
    return ["serve", "--role-arn", scenario.ROLE_01_ARN, "--port", str(port), "--region", scenario.REGION,
            "--sts-endpoint-url", world.sts_url, "--log-level", "warning", *extra]


@contextlib.contextmanager
def product(world: World, home: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[Target]:
    """metadata-proxy serve, pinned; with a valid IMDSv2 token for wrk to send."""
    process = DaemonProcess(product_args(world, free_port(), *extra),
                            {**daemon_env(home, **world.source.environ()), **(env or {})},
                            wrapper=tuple(pinned(SERVER_CPU, [])))
    try:
        url = process.wait_ready()
        if url is None:
            raise RuntimeError(f"metadata-proxy did not start: {process.stderr[-2000:]}")
        yield Target("metadata-proxy", process.proc, url.rstrip("/") + CREDENTIALS,
                     {"X-aws-ec2-metadata-token": token(url)})
    finally:
        process.stop()


def credentials_body(target: Target) -> bytes:
    base = target.url.removesuffix(CREDENTIALS) + "/"
    return get(base, CREDENTIALS, target.headers["X-aws-ec2-metadata-token"]).body


@contextlib.contextmanager
def _process(name: str, command: list[str], port: int, url: str, headers: dict[str, str] | None = None,
             **kwargs) -> Iterator[Target]:
    process = subprocess.Popen(pinned(SERVER_CPU, command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               **kwargs)
    try:
        wait_for_port(port, process)
        yield Target(name, process, url, headers or {})
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def aiohttp_baseline(body: bytes) -> Iterator[Target]:
    """(a) The framework ceiling: a bare web.Application returning the same bytes."""
    with tempfile.NamedTemporaryFile(suffix=".json") as file:
        file.write(body)
        file.flush()
        port = free_port()
        with _process("aiohttp web.Application", [sys.executable, str(BENCH / "baseline_app.py"), str(port),
                                                  file.name], port, f"http://127.0.0.1:{port}{CREDENTIALS}") as t:
            yield t


@contextlib.contextmanager
def nginx_baseline(body: bytes) -> Iterator[Target]:
    """(b) The machine's loopback ceiling: nginx, one worker, serving the same bytes as a static file."""
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
        with _process("nginx static file", command, port, f"http://127.0.0.1:{port}{CREDENTIALS}") as target:
            yield target


@contextlib.contextmanager
def moto_baseline() -> Iterator[Target]:
    """(c) A Python peer: moto's own IMDS-like credentials route (werkzeug, threaded)."""
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    with _process("moto IMDS route", [str(moto), "-H", "127.0.0.1", "-p", str(port)], port,
                  f"http://127.0.0.1:{port}/latest/meta-data/iam/security-credentials/default-role",
                  {"Host": "169.254.169.254"}, env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}) as target:
        yield target
