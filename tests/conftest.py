"""Shared fixtures: moto as AWS (server mode, IAM enforcement on), the fault proxy in front of it, the seed's
two-account world, and the daemon, either as a real child process or in-process with an injected clock."""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import moto.sts.models
import pytest
from moto.server import ThreadedMotoServer

from metadata_proxy import scenario
from metadata_proxy.config import RoleConfig, ServeConfig
from metadata_proxy.daemon import Daemon
from tests.support.fakeclock import FakeClock
from tests.support.faultproxy import FaultProxy
from tests.support.processes import DaemonProcess, daemon_env
from tests.support.worlds import add_role_04


@dataclass(frozen=True)
class World:
    moto_url: str  # S3 and IAM for the clients
    sts_url: str  # the fault proxy in front of moto, where the daemon sends AssumeRole
    proxy: FaultProxy
    source: scenario.SourceCredentials


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test process may find real credentials, or reach the real IMDS through boto3's chain."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "METADATA_PROXY_")) or name.lower() in ("http_proxy", "https_proxy"):
            monkeypatch.delenv(name)
    empty = tmp_path / "empty-aws-file"
    empty.touch()
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def session_proxy(moto_url: str) -> Iterator[FaultProxy]:
    host_port = moto_url.removeprefix("http://")
    host, port = host_port.rsplit(":", 1)
    proxy = FaultProxy(host, int(port)).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def session_world(moto_url: str, session_proxy: FaultProxy) -> World:
    return World(moto_url, session_proxy.url, session_proxy, scenario.build_world(moto_url))


@pytest.fixture(scope="session")
def role_04(session_world: World) -> str:
    """A second role in account A that role-02 may assume, for the several-roles tests."""
    return add_role_04(session_world.moto_url)


@pytest.fixture
def world(session_world: World) -> Iterator[World]:
    """The seed's world; faults and call counts start clean for every test."""
    session_world.proxy.reset()
    yield session_world
    session_world.proxy.reset()


# The daemon's two event loops: every test that starts a daemon process through the fixtures below runs on
# both (asyncio's own, which the systemd unit and the image use by default, and uvloop, the `fast` extra).
EVENT_LOOPS = ("asyncio", "uvloop")


def launch(world: World, home: Path, *args: str, env: dict[str, str] | None = None, source: bool = True,
           role_arn: str | None = scenario.ROLE_01_ARN, loop: str | None = None,
           wrapper: tuple[str, ...] = ()) -> DaemonProcess:
    """`metadata-proxy serve` for role-01 with role-02's credentials as its source (unless source=False).
    role_arn=None leaves the role (and port) to a --config file in args; loop picks the event loop; wrapper: a
    command to run it under."""
    environment = daemon_env(home, **(world.source.environ() if source else {}))
    if loop is not None:
        environment["METADATA_PROXY_EVENT_LOOP"] = loop
    environment.update(env or {})
    role = ["--role-arn", role_arn, "--port", "0"] if role_arn else []
    return DaemonProcess(["serve", *role, "--region", scenario.REGION, "--sts-endpoint-url", world.sts_url, *args],
                         environment, wrapper)


def launch_ready(world: World, home: Path, *args: str, loop: str | None = None) -> DaemonProcess:
    process = launch(world, home, *args, loop=loop)
    assert process.wait_ready(), process.stderr
    return process


@pytest.fixture(scope="module", params=EVENT_LOOPS)
def module_loop(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=EVENT_LOOPS)
def loop_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def shared_daemon(session_world: World, tmp_path_factory: pytest.TempPathFactory,
                  module_loop: str) -> Iterator[DaemonProcess]:
    """One plain daemon (role-01, defaults) for a whole test module whose tests only read from it."""
    process = launch_ready(session_world, tmp_path_factory.mktemp("shared"), loop=module_loop)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def url(shared_daemon: DaemonProcess) -> str:
    """The shared daemon's IMDS endpoint."""
    assert shared_daemon.url
    return shared_daemon.url


@pytest.fixture
def start_daemon(world: World, tmp_path: Path, loop_name: str) -> Iterator[Callable[..., DaemonProcess]]:
    """launch() for one test, on each event loop; every daemon started is stopped afterwards."""
    started: list[DaemonProcess] = []

    def start(*args: str, **kwargs) -> DaemonProcess:
        kwargs.setdefault("loop", loop_name)
        started.append(launch(world, tmp_path / "daemon-home", *args, **kwargs))
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The test's clock, which moto's STS follows too, so that issued Expirations move with it."""
    fake = FakeClock()
    monkeypatch.setattr(moto.sts.models, "utcnow",
                        lambda: datetime.datetime.fromtimestamp(fake.now, datetime.UTC).replace(tzinfo=None))
    return fake


@pytest.fixture
def in_process_daemon(world: World, clock: FakeClock, monkeypatch: pytest.MonkeyPatch):
    """Runs the Daemon on the test's event loop with the fake clock; yields it once it serves."""
    for name, value in world.source.environ().items():
        monkeypatch.setenv(name, value)

    @contextlib.asynccontextmanager
    async def run(**overrides) -> AsyncIterator[Daemon]:
        role = RoleConfig(role_arn=scenario.ROLE_01_ARN, port=0, role_session_name="test-session")
        config = replace(ServeConfig(roles=(role,), region=scenario.REGION, sts_endpoint_url=world.sts_url),
                         **overrides)
        daemon = Daemon(config, clock)
        task = await daemon.start_in_background()
        try:
            yield daemon
        finally:
            daemon.request_stop()
            await task

    return run
