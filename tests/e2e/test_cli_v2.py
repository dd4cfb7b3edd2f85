"""The AWS CLI v2, through IMDS and the container endpoint, next to the v1 from PyPI (tests/e2e/test_clients.py).

Pinned by the distribution: Debian 12's `awscli` package, 2.9.19, installed by CI with apt at /usr/bin/aws
(the venv's `aws` is v1). AWS ships v2 only as a bundled installer, not on PyPI; the Debian build is the one
a CI machine can install offline from its mirror. Being older than 2.28.3, it joins the IMDS endpoint and the
path without a '/', which is why the README asks for the trailing slash; and it predates
AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, so it takes the container token from AWS_CONTAINER_AUTHORIZATION_TOKEN.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from metadata_proxy import scenario
from metadata_proxy.demo import listing_rows
from tests.conftest import World
from tests.e2e.conftest import Endpoints
from tests.support.processes import ROLE_01_SESSION, run


def cli(binary: Path, world: World, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with S3 and STS at moto; AWS_PAGER="" because v2 otherwise pipes its output through less."""
    return run([str(binary), *args, "--endpoint-url", world.moto_url, "--region", scenario.REGION],
               {**env, "AWS_PAGER": ""})


def assert_role_01(binary: Path, world: World, env: dict[str, str]) -> None:
    identity = cli(binary, world, env, "sts", "get-caller-identity")
    assert identity.returncode == 0, identity.stderr
    assert ROLE_01_SESSION.match(json.loads(identity.stdout)["Arn"])
    listing = cli(binary, world, env, "s3", "ls", f"s3://{scenario.BUCKET}/")
    assert listing.returncode == 0, listing.stderr
    assert listing_rows(listing.stdout) == scenario.EXPECTED_LISTING


def test_cli_v2_through_imds_with_the_trailing_slash(aws_cli_v2: Path, world: World, endpoints: Endpoints,
                                                     tmp_path: Path) -> None:
    assert endpoints.imds_url.endswith("/")  # the daemon announces the form every client accepts
    assert_role_01(aws_cli_v2, world, endpoints.imds(tmp_path, AWS_EC2_METADATA_V1_DISABLED="true"))


def test_cli_v2_before_2_28_3_needs_the_trailing_slash(aws_cli_v2: Path, world: World, endpoints: Endpoints,
                                                       tmp_path: Path) -> None:
    """What the README's advice prevents: without the slash this CLI asks for http://127.0.0.1:PORTlatest/api/token
    and stops with exit status 255."""
    bare = endpoints.imds_url.rstrip("/")
    result = cli(aws_cli_v2, world, endpoints.imds(tmp_path, AWS_EC2_METADATA_SERVICE_ENDPOINT=bare),
                 "sts", "get-caller-identity")
    assert result.returncode == 255
    assert f"Invalid endpoint EC2 Instance Metadata endpoint: {bare}latest/api/token" in result.stderr


def test_cli_v2_through_the_container_endpoint(aws_cli_v2: Path, world: World, endpoints: Endpoints,
                                               tmp_path: Path) -> None:
    assert_role_01(aws_cli_v2, world, endpoints.container(tmp_path, by="env"))


def test_cli_v2_2_9_ignores_the_token_file(aws_cli_v2: Path, world: World, endpoints: Endpoints,
                                           tmp_path: Path) -> None:
    """Why the README gives this CLI the token variable: given only the file variable, it sends no token."""
    result = cli(aws_cli_v2, world, endpoints.container(tmp_path, by="file"), "sts", "get-caller-identity")
    assert result.returncode == 255
    assert "Received non 200 response (401)" in result.stderr
