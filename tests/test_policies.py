"""`metadata-proxy policies`: the seed's documents for the user's accounts, and commands that work."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import boto3
import botocore.exceptions
import pytest

from metadata_proxy import scenario
from metadata_proxy.model import RoleSpec
from metadata_proxy.sts import AssumeRoleClient
from tests.conftest import World
from tests.support.processes import client_env, run

TRUSTED = "arn:aws:iam::111111110002:role/role-02"

# The seed's documents (seed-scenario.md), with its xxxxxxxx0001 / xxxxxxxx0002 as 111111110001 / 111111110002.
SEED_ROLE_01_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111111110002:role/role-02"}, "Action": "sts:AssumeRole"}]}
SEED_POLICY_01 = {"Version": "2012-10-17",
                  "Statement": [{"Effect": "Allow", "Action": ["s3:Get*", "s3:List*"], "Resource": "*"}]}
SEED_ROLE_02_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
SEED_POLICY_02 = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "arn:aws:iam::111111110001:role/role-01"}]}


def policies(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "metadata_proxy", "policies", *args], capture_output=True,
                          text=True, timeout=60)


def test_broad_output_is_the_seeds_documents() -> None:
    result = policies("--trusted-role-arn", TRUSTED, "--bucket", "foobar", "--trusting-account", "111111110001",
                      "--broad")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["trusting_account"]["trust_policy"] == SEED_ROLE_01_TRUST
    assert out["trusting_account"]["policy"] == SEED_POLICY_01
    assert out["trusted_account"]["trust_policy"] == SEED_ROLE_02_TRUST
    assert out["trusted_account"]["policy"] == SEED_POLICY_02
    assert (out["trusting_account"]["role"], out["trusted_account"]["instance_profile"]) == ("role-01", "role-02")


def test_least_privilege_and_external_id() -> None:
    result = policies("--trusted-role-arn", TRUSTED, "--bucket", "foobar", "--trusting-account", "111111110001",
                      "--external-id", "ext-123")
    out = json.loads(result.stdout)
    assert out["trusting_account"]["policy"]["Statement"] == [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::foobar"},
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::foobar/*"}]
    (statement,) = out["trusting_account"]["trust_policy"]["Statement"]
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": "ext-123"}}


def test_missing_trusting_account_gets_a_placeholder_and_a_note() -> None:
    result = policies("--trusted-role-arn", TRUSTED, "--bucket", "foobar")
    assert result.returncode == 0
    assert "TRUSTING_ACCOUNT_ID" in result.stdout and "--trusting-account" in result.stderr


@pytest.mark.parametrize("args", [["--trusted-role-arn", "role-02", "--bucket", "foobar"],
                                  ["--trusted-role-arn", TRUSTED, "--bucket", "Bad_Bucket"],
                                  ["--trusted-role-arn", TRUSTED, "--bucket", "b0b", "--trusting-account", "12"],
                                  ["--bucket", "foobar"]])
def test_bad_flags_are_one_line_and_exit_2(args: list[str]) -> None:
    result = policies(*args)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1


def test_cli_commands_build_a_least_privilege_setup_that_works_in_moto(world: World, tmp_path: Path) -> None:
    """Run the printed `aws iam` commands with the real CLI in two fresh accounts, then check that role-02 can
    assume role-01 and list and read the bucket, and that role-01 can do nothing beyond that."""
    trusting, trusted, bucket = "222222220001", "222222220002", "foobar-least"
    trusted_arn = f"arn:aws:iam::{trusted}:role/role-02"
    result = policies("--trusted-role-arn", trusted_arn, "--bucket", bucket, "--trusting-account", trusting,
                      "--format", "cli")
    assert result.returncode == 0, result.stderr
    blocks = re.split(r"\n(?=# In the trusted account)", result.stdout)
    assert len(blocks) == 2
    scenario.set_enforcement(world.moto_url, False)
    try:
        for block, account in zip(blocks, (trusting, trusted), strict=True):
            creds = scenario.session_in(world.moto_url, account).get_credentials()
            env = client_env(tmp_path, AWS_ACCESS_KEY_ID=creds.access_key, AWS_SECRET_ACCESS_KEY=creds.secret_key,
                             AWS_SESSION_TOKEN=creds.token, AWS_DEFAULT_REGION=scenario.REGION)
            for line in block.splitlines():
                if line.startswith("aws "):
                    done = run(["sh", "-c", f"{line} --endpoint-url {world.moto_url}"], env)
                    assert done.returncode == 0, (line, done.stderr)
        s3 = scenario.session_in(world.moto_url, trusting).client("s3", endpoint_url=world.moto_url)
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="Hello.txt", Body=scenario.OBJECTS["Hello.txt"])
        source = scenario.session_in(world.moto_url, trusted).client("sts", endpoint_url=world.moto_url).assume_role(
            RoleArn=trusted_arn, RoleSessionName="i-1")["Credentials"]
    finally:
        scenario.set_enforcement(world.moto_url, True)
    role_02 = boto3.Session(aws_access_key_id=source["AccessKeyId"], aws_secret_access_key=source["SecretAccessKey"],
                            aws_session_token=source["SessionToken"])
    role_01 = AssumeRoleClient(role_02).assume(RoleSpec(role_arn=f"arn:aws:iam::{trusting}:role/role-01",
                                                       session_name="check", sts_endpoint_url=world.moto_url))
    s3 = boto3.Session(aws_access_key_id=role_01.access_key_id, aws_secret_access_key=role_01.secret_access_key,
                       aws_session_token=role_01.session_token, region_name=scenario.REGION).client(
        "s3", endpoint_url=world.moto_url)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["Hello.txt"]
    assert s3.get_object(Bucket=bucket, Key="Hello.txt")["Body"].read() == scenario.OBJECTS["Hello.txt"]
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        s3.list_objects_v2(Bucket=scenario.BUCKET)  # least privilege: not the other bucket
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        s3.put_object(Bucket=bucket, Key="x", Body=b"x")
