"""The IMDS HTTP surface, byte for byte, against a running daemon. Each test names the section of
shared/reference/imds-client-contract.md that it enforces."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from metadata_proxy import scenario
from tests.conftest import World, launch_ready
from tests.support.http import get, request, token

CREDS = "/latest/meta-data/iam/security-credentials/"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


@pytest.fixture(scope="module")
def tok(url: str) -> str:
    return token(url)


# --- §3.1 / §8.1-3: the token PUT ---

@pytest.mark.parametrize("ttl", ["21600", "300", "1"])
def test_token_put_echoes_ttl_and_has_no_newline(url: str, ttl: str) -> None:
    """§8.1, §8.2: botocore/JS/Java ask 21600, Go asks 300 and requires the echo header."""
    reply = request(url, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": ttl})
    assert reply.status == 200
    assert reply.headers["X-Aws-Ec2-Metadata-Token-Ttl-Seconds"] == ttl
    assert reply.body and not reply.body.endswith(b"\n")
    assert reply.headers["Content-Type"].startswith("text/plain")


FULLWIDTH_12 = "\uff11\uff12".encode().decode("latin-1")  # digits to str.isdigit(), not to IMDS


@pytest.mark.parametrize("ttl", [None, "", "0", "21601", "abc", "-5", "1.5", "+5", "1e3", FULLWIDTH_12])
def test_token_put_with_bad_ttl_is_400(url: str, ttl: str | None) -> None:
    """§3.1, §8.2: 400 only for a missing, invalid or out-of-range TTL."""
    headers = {} if ttl is None else {"X-aws-ec2-metadata-token-ttl-seconds": ttl}
    assert request(url, "PUT", "/latest/api/token", headers).status == 400


@pytest.mark.parametrize("path", ["/latest/api/token/", "//latest/api/token", "//latest//api/token/"])
def test_valid_token_put_is_never_403_404_405(url: str, path: str) -> None:
    """§8.3 with §2: those codes mean 'no IMDSv2, use v1' to every SDK."""
    reply = request(url, "PUT", path, {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
    assert reply.status == 200


def test_token_put_with_x_forwarded_for_is_403(url: str) -> None:
    """§3.1, §8.11: a token request that crossed a proxy is refused."""
    headers = {"X-aws-ec2-metadata-token-ttl-seconds": "21600", "X-Forwarded-For": "203.0.113.9"}
    assert request(url, "PUT", "/latest/api/token", headers).status == 403


def test_token_put_to_versioned_path_is_403(url: str) -> None:
    """§3.1: PUT to a version-specific token path is forbidden."""
    reply = request(url, "PUT", "/2021-03-23/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
    assert reply.status == 403


def test_token_put_accepts_empty_and_chunked_bodies(url: str) -> None:
    """§2.5: botocore and Node send Content-Length: 0; a chunked body is drained."""
    headers = {"X-aws-ec2-metadata-token-ttl-seconds": "60", "Content-Length": "0"}
    assert request(url, "PUT", "/latest/api/token", headers).status == 200
    chunked = {"X-aws-ec2-metadata-token-ttl-seconds": "60", "Transfer-Encoding": "chunked"}
    assert request(url, "PUT", "/latest/api/token", chunked, body=b"3\r\nabc\r\n0\r\n\r\n").status == 200


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "DELETE"])
def test_other_methods_on_token_path_are_405(url: str, tok: str, method: str) -> None:
    """§3.1 impl. choice: 405; no client sends these."""
    reply = request(url, method, "/latest/api/token", {"X-aws-ec2-metadata-token": tok})
    assert reply.status == 405
    assert "PUT" in reply.headers["Allow"]


# --- §3.2 / §8.4: token enforcement ---

def test_get_without_token_is_401_when_required(url: str) -> None:
    """§3.2, §8.4: required mode is the default; the token is checked before the path."""
    assert get(url, CREDS).status == 401
    assert get(url, "/no/such/path").status == 401


@pytest.mark.parametrize("bad", ["garbage", "A" * 56, "", "é" * 56])
def test_invalid_token_is_401(url: str, bad: str) -> None:
    """§8.4: invalid tokens are 401."""
    assert get(url, CREDS, headers={"X-aws-ec2-metadata-token": bad.encode().decode("latin-1")}).status == 401


def test_tampered_token_is_401(url: str, tok: str) -> None:
    """§3.1: tokens cannot be forged: flip one character of a valid one."""
    flipped = tok[:10] + ("A" if tok[10] != "A" else "B") + tok[11:]
    assert get(url, CREDS, flipped).status == 401


def test_imdsv1_mode_serves_without_token_but_still_rejects_bad_ones(session_world: World, tmp_path: Path) -> None:
    """§3.2 optional mode: no token serves; an invalid token is still 401."""
    process = launch_ready(session_world, tmp_path, "--allow-imdsv1")
    try:
        assert get(process.url, CREDS).text == "role-01"
        assert get(process.url, CREDS, "not-a-token").status == 401
    finally:
        assert process.stop() == 0


# --- §3.3 / §5 / §8.5-8: paths and documents ---

def test_role_list_is_exactly_the_role_name(url: str, tok: str) -> None:
    """§8.5: one role name, no trailing newline."""
    reply = get(url, CREDS, tok)
    assert reply.status == 200
    assert reply.body == b"role-01"


def test_credentials_document(url: str, tok: str) -> None:
    """§5.1, §8.6: Code, LastUpdated, Type, keys and ...Z timestamps, in AWS's field order."""
    reply = get(url, CREDS + "role-01", tok)
    assert reply.status == 200
    doc = json.loads(reply.body)
    assert list(doc) == ["Code", "LastUpdated", "Type", "AccessKeyId", "SecretAccessKey", "Token", "Expiration"]
    assert doc["Code"] == "Success" and doc["Type"] == "AWS-HMAC"
    assert all(doc[k] for k in ("AccessKeyId", "SecretAccessKey", "Token"))
    assert TIMESTAMP.match(doc["Expiration"]) and TIMESTAMP.match(doc["LastUpdated"])


def test_extended_credentials_carry_the_assumed_roles_account(url: str, tok: str) -> None:
    """§5.2, §8.8: the -extended paths are implemented, AccountId is the account of role-01."""
    assert get(url, "/latest/meta-data/iam/security-credentials-extended/", tok).body == b"role-01"
    doc = json.loads(get(url, "/latest/meta-data/iam/security-credentials-extended/role-01", tok).body)
    assert doc["AccountId"] == scenario.ACCOUNT_A
    legacy = json.loads(get(url, CREDS + "role-01", tok).body)
    assert "AccountId" not in legacy
    assert {k: v for k, v in doc.items() if k != "AccountId"} == legacy


@pytest.mark.parametrize("path", [
    "/latest/meta-data/iam/security-credentials",
    "/latest/meta-data/iam/security-credentials/",
    "//latest/meta-data/iam/security-credentials/",
    "/latest//meta-data///iam/security-credentials//",
])
def test_slashes_collapse_and_trailing_slash_is_optional(url: str, tok: str, path: str) -> None:
    """§2.2, §2.3, §8.7: Java sends //latest/..., Rust/Kotlin omit the trailing slash."""
    assert get(url, path, tok).body == b"role-01"


@pytest.mark.parametrize("path", [
    CREDS + "role-02",
    CREDS + "role-01/extra",
    CREDS + "role-01/..",
    "/latest/meta-data/iam/security-credentials/%72ole-01",
    "/latest/meta-data/iam/%2e%2e/iam/security-credentials",
    "/latest/user-data",
    "/latest/meta-data/public-keys",
    "/2021-07-15/meta-data/iam/security-credentials/",
    "/prefix/latest/meta-data/iam/security-credentials/",
])
def test_paths_not_served_are_404(url: str, tok: str, path: str) -> None:
    """§3.3: anything else is 404 and nothing is proxied (peers.md: credential path leaks)."""
    reply = get(url, path, tok)
    assert reply.status == 404
    assert b"Secret" not in reply.body


def test_head_is_allowed_and_other_methods_are_405(url: str, tok: str) -> None:
    """§3.2: metadata is GET and HEAD."""
    head = request(url, "HEAD", CREDS, {"X-aws-ec2-metadata-token": tok})
    assert head.status == 200 and head.body == b""
    for method in ("POST", "DELETE", "PATCH", "OPTIONS"):
        assert request(url, method, CREDS, {"X-aws-ec2-metadata-token": tok}).status == 405


def test_instance_values(url: str, tok: str) -> None:
    """§3.3, §5.3-5.5: placement, iam/info, identity document, with the region from --region."""
    assert get(url, "/latest/meta-data/placement/availability-zone/", tok).text == "us-east-1a"
    assert get(url, "/latest/meta-data/placement/region", tok).text == "us-east-1"
    assert re.match(r"^i-[0-9a-f]{17}$", get(url, "/latest/meta-data/instance-id", tok).text)
    info = json.loads(get(url, "/latest/meta-data/iam/info", tok).body)
    assert info["Code"] == "Success" and TIMESTAMP.match(info["LastUpdated"])
    assert info["InstanceProfileArn"] == f"arn:aws:iam::{scenario.ACCOUNT_A}:instance-profile/role-01"
    assert re.match(r"^AIPA[A-Z2-7]{17}$", info["InstanceProfileId"])
    doc = json.loads(get(url, "/latest/dynamic/instance-identity/document", tok).body)
    assert doc["region"] == "us-east-1" and doc["availabilityZone"] == "us-east-1a"
    assert TIMESTAMP.match(doc["pendingTime"]) and doc["version"] == "2017-09-30"


def test_listings(url: str, tok: str) -> None:
    """§3.3: listings are LF-separated, sub-directories end with '/', no trailing newline."""
    assert get(url, "/latest/meta-data/", tok).text.split("\n") == ["iam/", "instance-id", "instance-type",
                                                                    "placement/"]
    assert get(url, "/latest/meta-data/iam/", tok).text == "info\nsecurity-credentials/"
    assert get(url, "/latest/", tok).text == "dynamic\nmeta-data"


def test_configured_instance_values(session_world: World, tmp_path: Path) -> None:
    """Values are configurable: instance id and availability zone."""
    process = launch_ready(session_world, tmp_path, "--instance-id", "i-0123456789abcdef0",
                    "--availability-zone", "us-east-1c")
    try:
        tok = token(process.url)
        assert get(process.url, "/latest/meta-data/instance-id", tok).text == "i-0123456789abcdef0"
        doc = json.loads(get(process.url, "/latest/dynamic/instance-identity/document", tok).body)
        assert doc["instanceId"] == "i-0123456789abcdef0" and doc["availabilityZone"] == "us-east-1c"
    finally:
        process.stop()


# --- §8.11 and issue "basic safety": Host allow-list, header limits, no CORS ---

# Host header values only (sent to the loopback daemon): nothing connects to 169.254.169.254 here, so no
# isolated network namespace is needed.
@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:9254", "169.254.169.254.nip.io",
                                  # near-misses of accepted names: a rebinding name may start like one
                                  "localhost.attacker.example", "127.0.0.1.attacker.example",
                                  "localhost.attacker.example:9254", "xlocalhost", "localhost-", "127.0.0.1x",
                                  "[::1].attacker.example", "10.0.0.1", "0x7f.attacker.example"])
def test_foreign_host_header_is_refused(url: str, tok: str, host: str) -> None:
    """§8.11 DNS-rebinding defence: a page on a rebinding name cannot read the endpoint."""
    reply = get(url, CREDS + "role-01", tok, headers={"Host": host})
    assert reply.status == 403
    assert b"Secret" not in reply.body
    put = request(url, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60", "Host": host})
    assert put.status == 403


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost:1234", "LOCALHOST", "[::1]:80", "127.0.0.2"])
def test_loopback_host_headers_are_accepted(url: str, tok: str, host: str) -> None:
    assert get(url, CREDS, tok, headers={"Host": host}).status == 200


def test_oversized_headers_are_rejected_without_harm(url: str, tok: str) -> None:
    """Bounded header sizes: a 64 KiB header gets a 4xx, and the daemon keeps serving."""
    reply = get(url, CREDS, tok, headers={"X-Junk": "x" * 65536})
    assert 400 <= reply.status < 500
    assert get(url, CREDS, tok).status == 200


def test_no_cors_headers(url: str, tok: str) -> None:
    """§8.11: never emit CORS headers, so browsers cannot read responses cross-origin."""
    reply = get(url, CREDS + "role-01", tok, headers={"Origin": "http://evil.example.com"})
    assert not [h for h in reply.headers if h.lower().startswith("access-control-")]


def test_access_log_has_no_secrets(session_world: World, tmp_path: Path) -> None:
    """Request log lines (DEBUG): method, path, status, latency; never keys, session tokens or IMDSv2 tokens."""
    process = launch_ready(session_world, tmp_path, "--log-level", "debug")
    tok = token(process.url)
    doc = json.loads(get(process.url, CREDS + "role-01", tok).body)
    get(process.url, "/latest/api/token/" + tok, tok)  # a client that puts a token where it does not belong
    assert process.stop() == 0  # joins the log readers: every line is in
    logs = process.stderr
    assert "GET /latest/meta-data/iam/security-credentials/role-01 200" in logs
    for secret in (doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"]):
        assert secret not in logs
    assert tok not in logs.replace("/latest/api/token/" + tok, "")
