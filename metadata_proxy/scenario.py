"""The two-account cross-account scenario as data, and as a world built inside moto.

Account A (trusting) owns bucket `foobar` and role-01, readable with policy-01 and trusting role-02.
Account B (trusted) owns role-02, the EC2 instance's role, whose policy-02 only allows assuming role-01.
The offline demo and the tests both build this world in a moto server, with IAM enforcement switched on
afterwards, so that role-02 alone gets AccessDenied on the bucket exactly as in the scenario.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass

import boto3

from metadata_proxy.policies import CrossAccountSetup

ACCOUNT_A = "111111110001"
ACCOUNT_B = "111111110002"
ROLE_01_ARN = f"arn:aws:iam::{ACCOUNT_A}:role/role-01"
ROLE_02_ARN = f"arn:aws:iam::{ACCOUNT_B}:role/role-02"
BUCKET = "foobar"
REGION = "us-east-1"

# The listing the scenario expects: `PRE logs/`, 404.html (0), Hello.txt (37), hello.html (87), index.html (0).
OBJECTS: dict[str, bytes] = {
    "logs/2014-07-01.log": b"",
    "404.html": b"",
    "Hello.txt": b"Hello from the foobar bucket in 0001\n",
    "hello.html": b"<html><body><h1>Hello from the foobar bucket in account 0001</h1></body></html>\n\n\n\n\n\n\n\n",
    "index.html": b"",
}
# ... as `aws s3 ls` rows: (size or PRE, name)
EXPECTED_LISTING = [("PRE", "logs/"), ("0", "404.html"), ("37", "Hello.txt"), ("87", "hello.html"), ("0", "index.html")]


SETUP = CrossAccountSetup(trusting_role_name="role-01", trusting_account=ACCOUNT_A, trusted_role_arn=ROLE_02_ARN,
                         bucket=BUCKET, broad=True)


@dataclass(frozen=True, repr=False)
class SourceCredentials:
    """role-02's session: what the instance profile would hand the daemon on EC2."""

    access_key_id: str
    secret_access_key: str
    session_token: str

    def environ(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
                "AWS_SESSION_TOKEN": self.session_token}


def _moto_api(endpoint: str, path: str, body: bytes = b"") -> None:
    # text/plain: with urllib's default form type, moto's Flask would swallow the body as form data
    request = urllib.request.Request(f"{endpoint}/moto-api/{path}", data=body, method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=30):
        pass


def set_enforcement(endpoint: str, on: bool) -> None:
    """moto checks signatures and IAM policies only after this (testing-with-moto.md)."""
    _moto_api(endpoint, "reset-auth", b"0" if on else b"inf")


def session_in(endpoint: str, account: str) -> boto3.Session:
    """Credentials that act inside `account`: moto places an assumed role's session in the role's account."""
    admin = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    creds = admin.client("sts", endpoint_url=endpoint).assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/setup", RoleSessionName="scenario-setup")["Credentials"]
    return boto3.Session(aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                         aws_session_token=creds["SessionToken"], region_name=REGION)


def build_accounts(endpoint: str, setup: CrossAccountSetup = SETUP) -> SourceCredentials:
    """Builds the scenario's two accounts in moto (enforcement must be off) and returns the trusted role's
    credentials, as the instance profile would give them."""
    a = session_in(endpoint, setup.trusting_account)
    iam_a = a.client("iam", endpoint_url=endpoint)
    iam_a.create_role(RoleName=setup.trusting_role_name,
                      AssumeRolePolicyDocument=json.dumps(setup.trusting_role_trust_policy()))
    iam_a.put_role_policy(RoleName=setup.trusting_role_name, PolicyName="policy-01",
                          PolicyDocument=json.dumps(setup.trusting_role_policy()))
    s3 = a.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=setup.bucket)
    for key, body in OBJECTS.items():
        s3.put_object(Bucket=setup.bucket, Key=key, Body=body)

    trusted_account = setup.trusted_role_arn.split(":")[4]
    name = setup.trusted_role_name
    iam_b = session_in(endpoint, trusted_account).client("iam", endpoint_url=endpoint)
    iam_b.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(setup.trusted_role_trust_policy()))
    iam_b.put_role_policy(RoleName=name, PolicyName="policy-02", PolicyDocument=json.dumps(setup.trusted_role_policy()))
    iam_b.create_instance_profile(InstanceProfileName=name)
    iam_b.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    creds = session_in(endpoint, trusted_account).client("sts", endpoint_url=endpoint).assume_role(
        RoleArn=setup.trusted_role_arn, RoleSessionName="i-0123456789abcdef0")["Credentials"]
    return SourceCredentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])


def build_world(endpoint: str) -> SourceCredentials:
    """Resets moto, builds the two accounts, and switches IAM enforcement on."""
    _moto_api(endpoint, "reset")
    set_enforcement(endpoint, False)
    source = build_accounts(endpoint)
    set_enforcement(endpoint, True)
    return source
