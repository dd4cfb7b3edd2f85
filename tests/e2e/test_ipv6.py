"""IPv6: the AWS CLI (v1 and v2) and boto3 with AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6 against
`serve --host ::1`.

With the mode set and no endpoint, a client asks http://[fd00:ec2::254]/, real IMDS's IPv6 address, which
no test may reach (nor could a loopback daemon answer there). The mode alone therefore never reaches the
daemon: an IPv6 host's clients keep AWS_EC2_METADATA_SERVICE_ENDPOINT, in bracketed form, and the endpoint
wins over the mode in every SDK. These tests set both, as such a host would, so each client must accept the
pair and parse the bracketed address.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from metadata_proxy import scenario
from tests.conftest import World, launch
from tests.support.processes import BIN, BOTO3_PROBE, ROLE_01_SESSION, client_env, run


@pytest.fixture(scope="module")
def ipv6_url(session_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as error:  # some container runtimes switch IPv6 off entirely
        pytest.skip(f"this machine has no IPv6 loopback: {error}")
    process = launch(session_world, tmp_path_factory.mktemp("ipv6"), "--host", "::1")
    url = process.wait_ready()
    assert url, process.stderr
    yield url
    process.stop()


def ipv6_env(home: Path, url: str) -> dict[str, str]:
    return client_env(home, AWS_EC2_METADATA_SERVICE_ENDPOINT=url, AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE="IPv6",
                      AWS_EC2_METADATA_V1_DISABLED="true", AWS_PAGER="")


def test_the_daemon_announces_a_bracketed_ipv6_url(ipv6_url: str) -> None:
    assert ipv6_url.startswith("http://[::1]:") and ipv6_url.endswith("/")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_aws_cli_over_ipv6(ipv6_url: str, world: World, tmp_path: Path, version: str,
                           request: pytest.FixtureRequest) -> None:
    binary = BIN / "aws" if version == "v1" else request.getfixturevalue("aws_cli_v2")
    result = run([str(binary), "sts", "get-caller-identity", "--endpoint-url", world.moto_url,
                  "--region", scenario.REGION], ipv6_env(tmp_path, ipv6_url))
    assert result.returncode == 0, result.stderr
    assert ROLE_01_SESSION.match(json.loads(result.stdout)["Arn"])


def test_boto3_over_ipv6(ipv6_url: str, world: World, tmp_path: Path) -> None:
    result = run([sys.executable, "-c", BOTO3_PROBE, world.moto_url], ipv6_env(tmp_path, ipv6_url))
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["method"] == "iam-role" and ROLE_01_SESSION.match(probe["arn"])
