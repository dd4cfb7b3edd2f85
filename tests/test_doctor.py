"""`metadata-proxy doctor` on a correct setup, and with each of the seed's points broken."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from metadata_proxy import scenario
from metadata_proxy.client_chain import winning_sources
from metadata_proxy.policies import CrossAccountSetup
from tests.conftest import World
from tests.support.net import free_port
from tests.support.processes import DaemonProcess, daemon_env, run

BROKEN = CrossAccountSetup(trusting_role_name="role-01", trusting_account="333333330001",
                           trusted_role_arn="arn:aws:iam::333333330002:role/role-02", bucket="foobar-doctor")


def doctor(world: World, home: Path, source: scenario.SourceCredentials, *args: str) -> tuple[int, str]:
    result = run([sys.executable, "-m", "metadata_proxy", "doctor", "--region", scenario.REGION,
                  "--sts-endpoint-url", world.sts_url, "--s3-endpoint-url", world.moto_url, *args],
                 daemon_env(home, **source.environ()))
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout


def rows(table: str) -> dict[str, str]:
    """STEP -> RESULT, from the printed table (fix lines are indented under their step)."""
    header, *lines = table.splitlines()
    column = header.index("RESULT")
    return {line[:column].strip(): line[column:].split()[0] for line in lines if not line.startswith(" ")}


def test_correct_setup_passes_and_checks_the_running_daemon(world: World, tmp_path: Path,
                                                            start_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = start_daemon()
    assert daemon.wait_ready()
    code, table = doctor(world, tmp_path, world.source, "--role-arn", scenario.ROLE_01_ARN, "--bucket", scenario.BUCKET,
                         "--url", daemon.url)
    assert code == 0, table
    # The source keys this test hands doctor in the environment would win for a client run with it too.
    assert rows(table) == {"source identity": "ok", "AssumeRole role-01": "ok", "assumed identity": "ok",
                           "ListObjectsV2 s3://foobar": "ok", f"local endpoint {daemon.url}": "ok",
                           "client credentials": "warn"}
    assert "assumed-role/role-02/" in table and "assumed-role/role-01/" in table
    assert "fix: unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN" in table


def test_no_daemon_is_a_skip_not_a_failure(world: World, tmp_path: Path) -> None:
    code, table = doctor(world, tmp_path, world.source, "--role-arn", scenario.ROLE_01_ARN, "--port", str(free_port()))
    assert code == 0, table
    assert "skip" in table and "no daemon is listening there" in table


@pytest.fixture(scope="module")
def broken_world(session_world: World) -> Iterator[scenario.SourceCredentials]:
    """The seed's setup again in two other accounts, so that its policies can be removed one at a time."""
    scenario.set_enforcement(session_world.moto_url, False)
    try:
        source = scenario.build_accounts(session_world.moto_url, BROKEN)
    finally:
        scenario.set_enforcement(session_world.moto_url, True)
    yield source


def set_policy(world: World, account: str, role: str, name: str, document: dict | None) -> None:
    scenario.set_enforcement(world.moto_url, False)
    try:
        iam = scenario.session_in(world.moto_url, account).client("iam", endpoint_url=world.moto_url)
        if document is None:
            iam.delete_role_policy(RoleName=role, PolicyName=name)
        else:
            iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(document))
    finally:
        scenario.set_enforcement(world.moto_url, True)


@pytest.mark.parametrize(("account", "role", "policy", "failed_step", "passed_steps", "expected"), [
    ("333333330002", "role-02", "policy-02", "AssumeRole role-01", ["source identity"],
     ["AccessDenied", "point 1", "point 3", "arn:aws:iam::333333330002:role/role-02"]),
    ("333333330001", "role-01", "policy-01", "ListObjectsV2 s3://foobar-doctor",
     ["source identity", "AssumeRole role-01", "assumed identity"], ["AccessDenied", "point 2", "s3:ListBucket"]),
])
def test_a_missing_policy_is_named_with_its_fix(world: World, tmp_path: Path, broken_world: scenario.SourceCredentials,
                                                account: str, role: str, policy: str, failed_step: str,
                                                passed_steps: list[str], expected: list[str]) -> None:
    """Without policy-02: AccessDenied on AssumeRole, fix points 1 and 3. Without policy-01: the S3 denial,
    fix point 2. The policy is put back afterwards."""
    document = BROKEN.trusted_role_policy() if policy == "policy-02" else BROKEN.trusting_role_policy()
    set_policy(world, account, role, policy, None)
    try:
        code, table = doctor(world, tmp_path, broken_world, "--role-arn", BROKEN.trusting_role_arn,
                             "--bucket", BROKEN.bucket, "--port", str(free_port()))
    finally:
        set_policy(world, account, role, policy, document)
    assert code == 1
    steps = rows(table)
    assert steps[failed_step] == "FAIL"
    assert all(steps[step] == "ok" for step in passed_steps)
    for text in expected:
        assert text in table


def test_a_daemon_serving_another_role_fails_the_last_step(world: World, tmp_path: Path,
                                                           broken_world: scenario.SourceCredentials,
                                                           start_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = start_daemon()  # serves the seed world's role-01, account 111111110001
    assert daemon.wait_ready()
    code, table = doctor(world, tmp_path, broken_world, "--role-arn", BROKEN.trusting_role_arn, "--url", daemon.url)
    assert code == 1
    assert rows(table)[f"local endpoint {daemon.url}"] == "FAIL" and "another role" in table


def test_doctor_warns_of_a_default_profile_that_wins_over_the_endpoint(world: World, tmp_path: Path) -> None:
    """A ~/.aws/credentials [default] with keys: every SDK uses it before the endpoint. A warning, with the fix;
    the run still passes (the daemon's own checks are fine)."""
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = x\n")
    env = {**daemon_env(tmp_path, **world.source.environ()), "AWS_SHARED_CREDENTIALS_FILE": str(credentials)}
    result = run([sys.executable, "-m", "metadata_proxy", "doctor", "--region", scenario.REGION, "--role-arn",
                  scenario.ROLE_01_ARN, "--sts-endpoint-url", world.sts_url, "--port", str(free_port())], env)
    assert result.returncode == 0, result.stdout
    assert f"the [default] profile in {credentials} has keys: clients use it, not the endpoint" in result.stdout
    assert f"fix: remove the [default] section from {credentials} (or rename it to a named profile)" in result.stdout
    assert "AKIAEXAMPLE" not in result.stdout


def test_nothing_wins_over_the_endpoint_in_a_clean_environment(world: World, tmp_path: Path) -> None:
    assert winning_sources(daemon_env(tmp_path), lambda url: False) == []
