"""The seed's check with real, unmodified clients: the AWS CLI and boto3 from PyPI, the JavaScript SDK v3
from npm, and the request sequence of the Java v2 SDK (contract §4.4) over raw HTTP. The Go SDK v2, the AWS
CLI v2 and the AWS Common Runtime run for real in their own modules next to this one.

Clients run as subprocesses whose environment holds no AWS_* variable but the url under test, and
whose config and credential files are empty: whatever identity they show came from the daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metadata_proxy import scenario
from metadata_proxy.demo import listing_rows
from tests.conftest import World
from tests.support.http import get, request
from tests.support.processes import BOTO3_PROBE, JS_DIR, ROLE_01_SESSION, aws, client_env, node, run


def test_role_02_alone_is_denied_as_in_the_seed(world: World, tmp_path: Path) -> None:
    """The seed's first check: the instance's own identity cannot read the bucket."""
    result = aws("s3", "ls", "s3://foobar/", "--endpoint-url", world.moto_url, "--region", scenario.REGION,
                 env=client_env(tmp_path, **world.source.environ()))
    assert result.returncode != 0
    assert "AccessDenied" in result.stderr


def test_aws_cli_sees_role_01(world: World, url: str, tmp_path: Path) -> None:
    result = aws("sts", "get-caller-identity", "--endpoint-url", world.moto_url, "--region", scenario.REGION,
                 env=client_env(tmp_path, AWS_EC2_METADATA_SERVICE_ENDPOINT=url))
    assert result.returncode == 0, result.stderr
    identity = json.loads(result.stdout)
    assert ROLE_01_SESSION.match(identity["Arn"]) and identity["Account"] == scenario.ACCOUNT_A


@pytest.mark.parametrize("strip_slash", [False, True])
def test_aws_cli_lists_the_bucket_through_the_daemon(world: World, url: str, tmp_path: Path,
                                                     strip_slash: bool) -> None:
    """The seed's second check. §2: awscli v1's botocore joins the url with '/', so both forms work."""
    url = url.rstrip("/") if strip_slash else url
    env = client_env(tmp_path, AWS_EC2_METADATA_SERVICE_ENDPOINT=url, AWS_EC2_METADATA_V1_DISABLED="true")
    result = aws("s3", "ls", "s3://foobar/", "--endpoint-url", world.moto_url, "--region", scenario.REGION, env=env)
    assert result.returncode == 0, result.stderr
    assert listing_rows(result.stdout) == scenario.EXPECTED_LISTING




def test_boto3_default_chain_uses_the_instance_role_provider(world: World, url: str, tmp_path: Path) -> None:
    result = run([sys.executable, "-c", BOTO3_PROBE, world.moto_url],
                 client_env(tmp_path, AWS_EC2_METADATA_SERVICE_ENDPOINT=url))
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["method"] == "iam-role"
    assert ROLE_01_SESSION.match(probe["arn"])


def test_js_sdk_v3_default_chain(world: World, url: str, tmp_path: Path) -> None:
    """@aws-sdk/credential-provider-node's default chain, unmodified, from the lockfile under tests/js."""
    if node() is None or not (JS_DIR / "node_modules").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI must install the JS client: npm ci --prefix tests/js")
        pytest.skip("run `npm ci --prefix tests/js` to include the JavaScript SDK")
    result = subprocess.run([node(), str(JS_DIR / "whoami.mjs"), world.moto_url, scenario.BUCKET],
                            env=client_env(tmp_path, AWS_EC2_METADATA_SERVICE_ENDPOINT=url),
                            capture_output=True, text=True, timeout=120, cwd=JS_DIR)
    assert result.returncode == 0, result.stderr
    assert "expiration extension" not in result.stderr  # §4.2: JS warns when handed expired credentials
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert ROLE_01_SESSION.match(probe["arn"]) and probe["account"] == scenario.ACCOUNT_A
    assert sorted(probe["keys"]) == sorted(scenario.OBJECTS)


def test_java_v2_sequence(url: str) -> None:
    """§2, §4.4: Java concatenates the url (with its trailing '/') and the path, so it asks
    //latest/..., and it tries the -extended API first, reading AccountId from it."""
    # The token URL drops one trailing '/' first, so only the metadata GETs carry the double slash.
    tok = request(url, "PUT", "/latest/api/token", {"x-aws-ec2-metadata-token-ttl-seconds": "21600"}).text
    names = get(url, "//latest/meta-data/iam/security-credentials-extended/", tok).text
    name = names.strip().split("\n")[0]
    doc = json.loads(get(url, f"//latest/meta-data/iam/security-credentials-extended/{name}", tok).body)
    assert doc["AccountId"] == scenario.ACCOUNT_A
    assert doc["AccessKeyId"].strip() and doc["SecretAccessKey"].strip()


def test_rust_kotlin_paths_without_trailing_slash(url: str) -> None:
    """§3.3: the v2.1 spec's SDKs ask the extended paths without a trailing slash."""
    tok = request(url, "PUT", "/latest/api/token", {"x-aws-ec2-metadata-token-ttl-seconds": "21600"}).text
    assert get(url, "/latest/meta-data/iam/security-credentials-extended", tok).text == "role-01"
    doc = json.loads(get(url, "/latest/meta-data/iam/security-credentials-extended/role-01", tok).body)
    assert doc["Code"] == "Success" and doc["Type"] == "AWS-HMAC"
