"""The AWS SDK for Go v2, unmodified: config.LoadDefaultConfig, sts GetCallerIdentity and a listing of the
seed's bucket (tests/go), built offline against Debian 12's golang-github-aws-aws-sdk-go-v2-dev 1.17.1.

That version is pinned by the distribution, and CI installs it with apt (no network for Go modules). It is
old enough to read the container token only from AWS_CONTAINER_AUTHORIZATION_TOKEN (the _FILE variable came
with EKS Pod Identity, late 2023), which is what the container test gives it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metadata_proxy import scenario
from tests.conftest import World
from tests.e2e.conftest import Endpoints
from tests.support.processes import ROLE_01_SESSION, run

pytestmark = pytest.mark.timeout(300)  # the first test builds the program


def whoami(binary: Path, world: World, env: dict[str, str]) -> dict:
    result = run([str(binary), world.moto_url, scenario.BUCKET], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_go_sdk_through_imds(go_whoami: Path, world: World, endpoints: Endpoints, tmp_path: Path) -> None:
    """§4.3: a 300 s token with its TTL echoed, the credentials (Code == Success), and the region from the
    instance identity document: no AWS_REGION is set."""
    probe = whoami(go_whoami, world, endpoints.imds(tmp_path))
    assert probe["source"] == "EC2RoleProvider"
    assert probe["region"] == scenario.REGION
    assert ROLE_01_SESSION.match(probe["arn"]) and probe["account"] == scenario.ACCOUNT_A
    assert sorted(probe["keys"]) == sorted(scenario.OBJECTS)


def test_go_sdk_through_the_container_endpoint(go_whoami: Path, world: World, endpoints: Endpoints,
                                               tmp_path: Path) -> None:
    probe = whoami(go_whoami, world, endpoints.container(tmp_path, by="env", AWS_REGION=scenario.REGION))
    assert probe["source"] == "CredentialsEndpointProvider"
    assert ROLE_01_SESSION.match(probe["arn"]) and probe["account"] == scenario.ACCOUNT_A
    assert sorted(probe["keys"]) == sorted(scenario.OBJECTS)


def test_go_sdk_1_17_ignores_the_token_file(go_whoami: Path, world: World, endpoints: Endpoints,
                                            tmp_path: Path) -> None:
    """Why the README gives this SDK the token variable: given only the file variable, it sends no token."""
    result = run([str(go_whoami), world.moto_url, scenario.BUCKET],
                 endpoints.container(tmp_path, by="file", AWS_REGION=scenario.REGION))
    assert result.returncode == 1
    assert "missing Authorization header" in result.stderr
