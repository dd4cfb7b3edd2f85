"""The AWS Common Runtime's default credentials chain (awscrt from PyPI, the C library aws-c-auth that
Mountpoint for Amazon S3 and the CRT-based SDK clients share), through IMDS and the container endpoint.

The CRT keeps the IMDSv2 token in a 64-byte buffer that never grows: with a longer token it fetches one,
fails to store it, and never asks for credentials. These tests are what holds the token at AWS's length.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import World
from tests.e2e.conftest import Endpoints
from tests.support.processes import CRT_PROBE, ROLE_01_SESSION, run


def crt_identity(world: World, env: dict[str, str]) -> dict:
    result = run([sys.executable, "-c", CRT_PROBE, world.moto_url], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_crt_default_chain_through_imds(world: World, endpoints: Endpoints, tmp_path: Path) -> None:
    probe = crt_identity(world, endpoints.imds(tmp_path))
    assert ROLE_01_SESSION.match(probe["arn"]) and probe["expires"]


def test_crt_default_chain_through_the_container_endpoint(world: World, endpoints: Endpoints,
                                                          tmp_path: Path) -> None:
    probe = crt_identity(world, endpoints.container(tmp_path, by="file"))
    assert ROLE_01_SESSION.match(probe["arn"]) and probe["expires"]
