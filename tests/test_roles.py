"""Several roles from one config file, and session policies."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import unquote_plus

import pytest

from metadata_proxy import scenario
from metadata_proxy.config import RoleConfig
from tests.conftest import World, launch
from tests.support.fakeclock import FakeClock
from tests.support.http import get, request, token

CREDS = "/latest/meta-data/iam/security-credentials/"


def two_role_config(tmp_path: Path, world: World, role_04: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f"""
region = "{scenario.REGION}"
sts_endpoint_url = "{world.sts_url}"
container_credentials = true
duration_seconds = 3600

[[role]]
role_arn = "{scenario.ROLE_01_ARN}"
port = 0
container_token_file = "tokens/role-01.token"

[[role]]
name = "reader"
role_arn = "{role_04}"
port = 0
role_session_name = "reader-session"
container_token_file = "tokens/reader.token"
""")
    return config


def test_each_listener_serves_only_its_role(world: World, role_04: str, tmp_path: Path) -> None:
    config = two_role_config(tmp_path, world, role_04)
    process = launch(world, tmp_path, "--config", str(config), role_arn=None)
    try:
        first = process.wait_ready()
        assert first, process.stderr
        second = process.export("AWS_EC2_METADATA_SERVICE_ENDPOINT", 1)
        assert first != second
        for url, name, other in ((first, "role-01", "role-04"), (second, "role-04", "role-01")):
            tok = token(url)
            assert get(url, CREDS, tok).text == name
            assert json.loads(get(url, CREDS + name, tok).body)["Code"] == "Success"
            assert get(url, CREDS + other, tok).status == 404
        # container paths: each role's own path, with its own token, on its own listener
        reader_uri = process.export("AWS_CONTAINER_CREDENTIALS_FULL_URI", 1)
        reader_token = Path(process.export("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", 1)).read_text()
        assert reader_uri == second.rstrip("/") + "/v1/credentials/reader"
        assert (tmp_path / "tokens" / "reader.token").read_text() == reader_token  # relative to the config file
        doc = json.loads(request(second, "GET", "/v1/credentials/reader", {"Authorization": reader_token}).body)
        assert doc["RoleArn"] == role_04
        role_01_token = Path(process.export("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", 0)).read_text()
        assert request(second, "GET", "/v1/credentials/reader", {"Authorization": role_01_token}).status == 403
        assert request(first, "GET", "/v1/credentials/reader", {"Authorization": reader_token}).status in (401, 404)
        assert "# reader: " + role_04 in process.stdout_seen
    finally:
        assert process.stop() == 0
    sessions = {unquote_plus(b["RoleSessionName"][0]) for b in world.proxy.bodies if "RoleSessionName" in b}
    assert "reader-session" in sessions


async def test_one_roles_sts_failure_does_not_touch_the_other(in_process_daemon, clock: FakeClock, world: World,
                                                               role_04: str) -> None:
    roles = (RoleConfig(role_arn=scenario.ROLE_01_ARN, port=0), RoleConfig(role_arn=role_04, port=0))
    async with in_process_daemon(roles=roles) as daemon:
        first, second = (listener.url for listener in daemon.listeners)
        world.proxy.outage("AssumeRole", "503", role_arn=role_04)
        states = daemon.refresher.states
        reader = next(s for spec, s in states.items() if spec.role_arn == role_04)
        while daemon.store.get(reader.spec) is not None:
            clock.advance_to(min(s.next_attempt for s in states.values()))
            await daemon.refresher.wait_for(lambda: all(s.next_attempt > clock.now for s in states.values()))

        async def creds(url: str, name: str) -> dict:
            tok = await asyncio.to_thread(token, url)
            return json.loads((await asyncio.to_thread(get, url, CREDS + name, tok)).body)

        assert (await creds(second, "role-04"))["Code"] == "ServiceUnavailable"
        healthy = await creds(first, "role-01")
        assert healthy["Code"] == "Success"


def test_session_policy_is_sent_with_every_assume_role(world: World, tmp_path: Path) -> None:
    """moto accepts a session policy but does not enforce it (testing-with-moto.md: only the caller's own
    identity policies count), so what is checked is the nearest thing: STS receives the policy, minified,
    on every AssumeRole of that role."""
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::foobar"},
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::foobar/*"}]}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy, indent=4))
    process = launch(world, tmp_path, "--session-policy", str(path))
    assert process.wait_ready(), process.stderr
    assert process.stop() == 0
    (body,) = [b for b in world.proxy.bodies if b.get("Action") == ["AssumeRole"]]
    assert json.loads(body["Policy"][0]) == policy
    assert body["Policy"][0] == json.dumps(policy, separators=(",", ":"))


@pytest.mark.parametrize(("content", "expected"), [("{not json", "not valid JSON"),
                                                   ('["a list"]', "not an IAM policy")])
def test_invalid_session_policy_is_one_line_and_exit_2(world: World, tmp_path: Path, content: str,
                                                       expected: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(content)
    process = launch(world, tmp_path, "--session-policy", str(path))
    assert process.wait_ready() is None
    assert process.wait() == 2
    (line,) = process.stderr_lines
    assert "--session-policy" in line and expected in line
    assert world.proxy.calls["AssumeRole"] == 0
