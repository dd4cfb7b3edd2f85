"""Which credentials path each real client asks: the README's Compatibility section says none of these asks
security-credentials-extended first (only Java v2, Kotlin and PHP do), so the daemon must keep serving the
plain path exactly as it does."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from metadata_proxy import scenario
from tests.conftest import World
from tests.support.processes import BIN, BOTO3_PROBE, CRT_PROBE, DaemonProcess, client_env, run

pytestmark = pytest.mark.timeout(300)  # the Go case may build its program first


def command(client: str, world: World, request: pytest.FixtureRequest) -> list[str]:
    cli = ["sts", "get-caller-identity", "--endpoint-url", world.moto_url, "--region", scenario.REGION]
    if client == "aws-cli-v1":
        return [str(BIN / "aws"), *cli]
    if client == "aws-cli-v2":
        return [str(request.getfixturevalue("aws_cli_v2")), *cli]
    if client == "go-sdk-v2":
        return [str(request.getfixturevalue("go_whoami")), world.moto_url, scenario.BUCKET]
    return [sys.executable, "-c", {"boto3": BOTO3_PROBE, "awscrt": CRT_PROBE}[client], world.moto_url]


@pytest.mark.parametrize("client", ["aws-cli-v1", "aws-cli-v2", "boto3", "go-sdk-v2", "awscrt"])
def test_client_asks_the_plain_credentials_path(client: str, world: World, tmp_path: Path,
                                                start_daemon: Callable[..., DaemonProcess],
                                                request: pytest.FixtureRequest) -> None:
    args = command(client, world, request)
    daemon = start_daemon("--log-level", "debug")  # a line per request
    assert daemon.wait_ready(), daemon.stderr
    result = run(args, client_env(tmp_path, AWS_EC2_METADATA_SERVICE_ENDPOINT=daemon.url, AWS_PAGER=""))
    assert result.returncode == 0, result.stderr
    assert daemon.stop() == 0  # joins the log readers: every access line is in
    assert "GET /latest/meta-data/iam/security-credentials/role-01 200" in daemon.stderr
    assert "security-credentials-extended" not in daemon.stderr
