"""The admin listener: /metrics (parsed with prometheus_client's own parser), /healthz and /readyz."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from metadata_proxy import scenario
from metadata_proxy.errors import ConfigError
from tests.conftest import World, launch
from tests.support.fakeclock import FakeClock
from tests.support.http import get, request, token
from tests.support.net import free_port
from tests.support.processes import DaemonProcess

CREDS = "/latest/meta-data/iam/security-credentials/role-01"


def scrape(admin: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = get(admin, "/metrics")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def daemon(world: World, tmp_path: Path) -> Iterator[tuple[DaemonProcess, str]]:
    port = free_port()
    process = launch(world, tmp_path, "--admin-port", str(port))
    assert process.wait_ready(), process.stderr
    yield process, f"http://127.0.0.1:{port}/"
    process.stop()


def test_metrics_move_as_clients_use_the_daemon(daemon: tuple[DaemonProcess, str]) -> None:
    process, admin = daemon
    url = process.url
    before = scrape(admin)
    tok = token(url)
    for _ in range(3):
        assert get(url, CREDS, tok).status == 200
    assert get(url, CREDS).status == 401  # no token
    assert get(url, CREDS, "forged").status == 401
    assert get(url, CREDS, tok, headers={"Host": "evil.example"}).status == 403
    assert request(url, "DELETE", CREDS, {"X-aws-ec2-metadata-token": tok}).status == 405
    after = scrape(admin)
    role = scenario.ROLE_01_ARN

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("metadata_proxy_requests_total", route="credentials", status="200") == 3
    assert moved("metadata_proxy_requests_total", route="token", status="200") == 1
    assert moved("metadata_proxy_request_duration_seconds_count", route="credentials") == 3
    assert moved("metadata_proxy_imds_tokens_issued_total") == 1
    assert moved("metadata_proxy_imds_tokens_rejected_total") == 1
    assert moved("metadata_proxy_requests_refused_total", reason="token") == 2
    assert moved("metadata_proxy_requests_refused_total", reason="host") == 1
    assert moved("metadata_proxy_requests_refused_total", reason="method") == 1
    assert value(after, "metadata_proxy_assume_role_calls_total", role=role, outcome="success", error_code="") == 1
    assert value(after, "metadata_proxy_assume_role_duration_seconds_count", role=role) == 1
    assert value(after, "metadata_proxy_credentials_expiry_seconds", role=role) > 1800
    assert value(after, "metadata_proxy_last_refresh_timestamp_seconds", role=role) > 1.7e9
    assert value(after, "metadata_proxy_refreshes_in_flight") == 0


def test_health_and_readiness(daemon: tuple[DaemonProcess, str]) -> None:
    _, admin = daemon
    assert json.loads(get(admin, "/healthz").body) == {"status": "ok"}
    ready = get(admin, "/readyz")
    assert ready.status == 200
    body = json.loads(ready.body)
    assert body["ready"] is True and body["roles"][scenario.ROLE_01_ARN]["expires_in"] > 1800
    assert get(admin, "/latest/meta-data/iam/security-credentials/").status == 404  # no credentials here
    assert request(admin, "POST", "/metrics").status == 405
    assert get(admin, "/metrics", headers={"Host": "evil.example"}).status == 403


def test_admin_port_must_differ_from_the_role_ports() -> None:
    from metadata_proxy.cli_parser import build_parser
    from metadata_proxy.config import load_serve_config

    args = build_parser().parse_args(["serve", "--role-arn", scenario.ROLE_01_ARN, "--port", "9300",
                                      "--admin-port", "9300"])
    with pytest.raises(ConfigError, match="admin listener"):
        load_serve_config(args, {})


async def test_sts_failures_show_in_metrics_and_readiness(in_process_daemon, clock: FakeClock, world: World) -> None:
    """During an outage: failures counted with STS's code; /readyz turns 503 once the served credentials
    fall under the floor, while /healthz stays 200 (the process is fine, STS is not)."""
    port = free_port()
    async with in_process_daemon(admin_port=port) as daemon:
        admin = f"http://127.0.0.1:{port}/"
        world.proxy.outage("AssumeRole", "throttle")
        (state,) = daemon.refresher.states.values()
        creds = daemon.store.get(state.spec)
        while clock.now < creds.expiration - 1700:
            clock.advance_to(state.next_attempt)
            await daemon.refresher.wait_for(lambda: state.next_attempt > clock.now)
        samples = await asyncio.to_thread(scrape, admin)
        failures = value(samples, "metadata_proxy_assume_role_calls_total", role=scenario.ROLE_01_ARN,
                         outcome="failure", error_code="Throttling")
        assert failures == state.attempts - 1 >= 1
        readiness = await asyncio.to_thread(get, admin, "/readyz")
        assert readiness.status == 503
        entry = json.loads(readiness.body)["roles"][scenario.ROLE_01_ARN]
        assert entry["ready"] is False and entry["last_error"] == "Throttling" and entry["expires_in"] < 1800
        assert (await asyncio.to_thread(get, admin, "/healthz")).status == 200
