"""The AssumeRole call and its error classification, against moto through the fault proxy."""

from __future__ import annotations

import dataclasses

import boto3
import botocore.exceptions
import pytest

from metadata_proxy import scenario
from metadata_proxy.model import Credentials, RoleSpec
from metadata_proxy.sts import AssumeRoleClient, StsError, classify
from tests.conftest import World


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "AssumeRole")


@pytest.mark.parametrize(("error", "code", "transient"), [
    (client_error("Throttling", 400), "Throttling", True),
    (client_error("ServiceUnavailable", 503), "ServiceUnavailable", True),
    (client_error("SomethingNew", 502), "SomethingNew", True),
    (client_error("SomethingElse", 400), "SomethingElse", False),
    (client_error("AccessDenied", 403), "AccessDenied", False),
    (client_error("ExpiredToken", 400), "ExpiredToken", False),
    (client_error("RegionDisabledException", 403), "RegionDisabledException", False),
    (botocore.exceptions.NoCredentialsError(), "NoSourceCredentials", False),
    (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), "ConnectionError", True),
    (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), "Timeout", True),
    (ValueError("odd"), "ValueError", True),
])
def test_classify(error: Exception, code: str, transient: bool) -> None:
    sts_error = classify(error, scenario.ROLE_01_ARN)
    assert (sts_error.code, sts_error.transient) == (code, transient)
    # What an operator reads: "retrying" for a transient error, else something to check, naming what.
    assert (sts_error.hint == "a transient error; retrying") == transient
    assert transient or sts_error.hint.startswith(("check", "the source", "STS is not activated", "shorten"))


@pytest.mark.parametrize("role_arn", ["arn:aws:iam::111111110001:role/role-01",
                                      "arn:aws:iam::222222222222:role/reports/reader"])
def test_access_denied_hint_names_the_configured_role(role_arn: str) -> None:
    """The hint names the role that was asked for (it used to say role-01 whatever the role)."""
    hint = classify(client_error("AccessDenied", 403), role_arn).hint
    assert f"the trust policy of {role_arn}" in hint
    assert f"sts:AssumeRole on {role_arn}" in hint
    assert role_arn.endswith("role-01") or "role-01" not in hint


def test_every_assume_role_input_is_part_of_the_key() -> None:
    base = RoleSpec(role_arn=scenario.ROLE_01_ARN, session_name="s")
    variants = [dataclasses.replace(base, **{name: value}) for name, value in (
        ("role_arn", scenario.ROLE_02_ARN), ("session_name", "t"), ("external_id", "x1"), ("duration_seconds", 900),
        ("policy", "{}"), ("sts_endpoint_url", "http://127.0.0.1:1"), ("region", "eu-west-1"))]
    assert len({base, *variants}) == 1 + len(variants)
    assert dataclasses.replace(base) == base and hash(dataclasses.replace(base)) == hash(base)


def test_credentials_repr_hides_secrets() -> None:
    creds = Credentials("ASIAKEYID", "SECRETKEY", "SESSIONTOKEN", 2e9, 1e9, "arn:aws:sts::1:assumed-role/r/s")
    assert not {"ASIAKEYID", "SECRETKEY", "SESSIONTOKEN"} & set(repr(creds).replace("(", " ").split())
    assert "SECRET" not in repr(creds) and "ASIA" not in repr(creds)


def source_session(world: World) -> boto3.Session:
    src = world.source
    return boto3.Session(aws_access_key_id=src.access_key_id, aws_secret_access_key=src.secret_access_key,
                         aws_session_token=src.session_token)


def spec(world: World) -> RoleSpec:
    return RoleSpec(role_arn=scenario.ROLE_01_ARN, session_name="unit", sts_endpoint_url=world.sts_url)


def test_assume_role_against_moto(world: World) -> None:
    creds = AssumeRoleClient(source_session(world)).assume(spec(world))
    assert creds.account_id == scenario.ACCOUNT_A
    assert creds.assumed_role_arn.endswith(":assumed-role/role-01/unit")
    assert 3590 < creds.lifetime <= 3600


def test_sts_timeout_is_transient(world: World) -> None:
    """A hung STS connection (the proxy never answers) becomes a transient Timeout, not a hang."""
    world.proxy.fail_next("AssumeRole", "hang")
    with pytest.raises(StsError) as caught:
        AssumeRoleClient(source_session(world), timeout=1).assume(spec(world))
    assert (caught.value.code, caught.value.transient) == ("Timeout", True)


def test_each_fault_maps_to_a_transient_sts_error(world: World) -> None:
    client = AssumeRoleClient(source_session(world))
    for fault, code in (("throttle", "Throttling"), ("500", "InternalFailure"), ("503", "ServiceUnavailable"),
                        ("reset", "ConnectionError")):
        world.proxy.fail_next("AssumeRole", fault)
        with pytest.raises(StsError) as caught:
            client.assume(spec(world))
        assert (caught.value.code, caught.value.transient) == (code, True)
    assert client.assume(spec(world)).access_key_id
