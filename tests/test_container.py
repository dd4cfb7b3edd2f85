"""The container-credentials endpoint (contract §7), with its token file, and real clients through it."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient

from metadata_proxy import scenario
from metadata_proxy.container import ContainerRoutes
from metadata_proxy.demo import listing_rows
from metadata_proxy.gate import HostCheck, guarded
from metadata_proxy.ledger import Ledger
from metadata_proxy.metrics import Metrics
from metadata_proxy.model import Credentials, RoleSpec
from metadata_proxy.refresher import RoleState
from metadata_proxy.store import CredentialStore
from metadata_proxy.sts import StsError
from tests.conftest import World, launch
from tests.support.fakeclock import FakeClock
from tests.support.gated import GatedTestServer
from tests.support.http import request
from tests.support.processes import BOTO3_PROBE, JS_DIR, ROLE_01_SESSION, DaemonProcess, aws, client_env, node, run
from tests.support.users import NOBODY, needs_root, reachable_dir, unused_gids

CONTAINER_VARS = ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")


# --- the endpoint ---

@pytest.fixture(scope="module")
def daemon(session_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    home = tmp_path_factory.mktemp("container")
    process = launch(session_world, home, "--container-credentials", "--container-token-file",
                     str(home / "tokens" / "role-01.token"))
    assert process.wait_ready(), process.stderr
    yield process
    process.stop()


@pytest.fixture(scope="module")
def full_uri(daemon: DaemonProcess) -> str:
    return daemon.export("AWS_CONTAINER_CREDENTIALS_FULL_URI")


@pytest.fixture(scope="module")
def token_file(daemon: DaemonProcess) -> Path:
    return Path(daemon.export("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"))


def path_of(uri: str) -> str:
    return "/" + uri.split("/", 3)[3]


def test_announces_the_two_variables_and_writes_the_token(daemon: DaemonProcess, full_uri: str,
                                                          token_file: Path) -> None:
    assert full_uri == daemon.url.rstrip("/") + "/v1/credentials/role-01"
    assert full_uri.startswith("http://127.0.0.1:")  # §7.2: the literal address every SDK accepts
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert not token_file.read_text().endswith("\n")


def test_credentials_with_the_token(daemon: DaemonProcess, full_uri: str, token_file: Path) -> None:
    """§7.2: 200, application/json, the four required fields plus AccountId and RoleArn."""
    reply = request(daemon.url, "GET", path_of(full_uri), {"Authorization": token_file.read_text()})
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    doc = json.loads(reply.body)
    assert set(doc) == {"AccessKeyId", "SecretAccessKey", "Token", "Expiration", "AccountId", "RoleArn"}
    assert doc["Expiration"].endswith("Z") and doc["AccountId"] == scenario.ACCOUNT_A
    assert doc["RoleArn"] == scenario.ROLE_01_ARN


@pytest.mark.parametrize("spoil", [lambda t: t + "x", lambda t: t[:-1], lambda t: t[: len(t) // 2],
                                   lambda t: "A" * len(t), lambda t: t[::-1],
                                   lambda t: "Bearer " + t, lambda t: t.upper() if t != t.upper() else t.lower()],
                         ids=["appended", "one-short", "prefix", "same-length", "reversed",
                              "bearer", "other-case"])
def test_near_miss_tokens_are_refused(daemon: DaemonProcess, full_uri: str, token_file: Path, spoil) -> None:
    """Only the exact token: a character appended, a prefix, another token of the same length, ... are 403."""
    genuine = token_file.read_text()
    reply = request(daemon.url, "GET", path_of(full_uri), {"Authorization": spoil(genuine)})
    assert reply.status == 403
    assert not {"AccessKeyId", "SecretAccessKey", "Token"} & set(json.loads(reply.body))


@pytest.mark.parametrize(("headers", "status"), [({}, 401), ({"Authorization": "wrong-token-0123456789"}, 403),
                                                 ({"Authorization": ""}, 403)])
def test_missing_or_wrong_token(daemon: DaemonProcess, full_uri: str, headers: dict[str, str],
                                status: int) -> None:
    """§7.2: 401/403 with both casings of code and message, and never a credential."""
    reply = request(daemon.url, "GET", path_of(full_uri), headers)
    assert reply.status == status
    doc = json.loads(reply.body)
    assert doc["code"] == doc["Code"] and doc["message"] == doc["Message"]
    assert not {"AccessKeyId", "SecretAccessKey", "Token"} & set(doc)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_methods_are_405(daemon: DaemonProcess, full_uri: str, token_file: Path, method: str) -> None:
    reply = request(daemon.url, method, path_of(full_uri), {"Authorization": token_file.read_text()})
    assert reply.status == 405
    assert b"SecretAccessKey" not in reply.body


@pytest.mark.parametrize("path", ["/v1/credentials/role-04", "/v1/credentials/", "/v1/credentials/role-01/x"])
def test_unknown_container_paths_serve_nothing(daemon: DaemonProcess, token_file: Path, path: str) -> None:
    reply = request(daemon.url, "GET", path, {"Authorization": token_file.read_text()})
    assert reply.status in (401, 404)
    assert b"SecretAccessKey" not in reply.body


def test_imds_still_requires_its_own_token(daemon: DaemonProcess, token_file: Path) -> None:
    """The container token is no IMDSv2 token: the IMDS side stays closed without one."""
    reply = request(daemon.url, "GET", "/latest/meta-data/iam/security-credentials/role-01",
                    {"Authorization": token_file.read_text()})
    assert reply.status == 401


# --- the route in-process: each way through the token check, with the exact answer and what /metrics counts ---
# (under `python -m tests.mutation` a daemon in a child process runs unmutated code: these pin the check itself)

SECRET = "container-token-0123456789abcdef"  # what the token file holds
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
ROLE_ARN = "arn:aws:iam::111111111111:role/role-01"
SPEC = RoleSpec(role_arn=ROLE_ARN, session_name="s")


def creds(key: str) -> Credentials:
    return Credentials(key, f"secret-of-{key}", f"session-of-{key}", NOW + 3600, NOW,
                       "arn:aws:sts::111111111111:assumed-role/role-01/s")


@dataclass
class Route:
    client: TestClient
    store: CredentialStore
    state: RoleState
    metrics: Metrics

    async def get(self, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
        async with self.client.request(method, "/v1/credentials/role-01", headers=headers or {}) as reply:
            body = await reply.read()
            return reply.status, dict(reply.headers), body

    def counted(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def refusals(self) -> dict[str, float]:
        """Every refusal /metrics counts, by reason."""
        return {sample.labels["reason"]: sample.value for family in self.metrics.registry.collect()
                if family.name == "metadata_proxy_requests_refused" for sample in family.samples
                if sample.name.endswith("_total")}


@pytest.fixture
async def route(aiohttp_client) -> Route:
    clock = FakeClock(NOW)
    store = CredentialStore(clock)
    state = RoleState(SPEC)
    ledger = Ledger()
    metrics = Metrics(ledger)
    routes = ContainerRoutes(SPEC, state, store, SECRET)
    served = SimpleNamespace(routes=routes, allowed=None, audit_role=None)
    return Route(await aiohttp_client(GatedTestServer(guarded(served, HostCheck("127.0.0.1"), ledger))), store, state,
                 metrics)


async def test_in_process_the_exact_token_gets_the_document_and_a_refresh_replaces_it(route: Route) -> None:
    route.store.put(SPEC, creds("ASIAFIRST"))
    status, headers, body = await route.get({"Authorization": SECRET})
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert json.loads(body) == {"AccessKeyId": "ASIAFIRST", "SecretAccessKey": "secret-of-ASIAFIRST",
                                "Token": "session-of-ASIAFIRST", "Expiration": "2027-01-15T09:00:00Z",
                                "AccountId": "111111111111", "RoleArn": ROLE_ARN}
    route.store.put(SPEC, creds("ASIASECOND"))
    status, _, body = await route.get({"Authorization": SECRET})
    assert (status, json.loads(body)["AccessKeyId"]) == (200, "ASIASECOND")
    status, _, body = await route.get({"Authorization": SECRET}, method="HEAD")
    assert (status, body) == (200, b"")
    assert route.counted("metadata_proxy_requests_total", route="container", status="200") == 3
    assert route.refusals() == {}


@pytest.mark.parametrize("presented", [SECRET + "x", SECRET[:-1], SECRET[:16], "A" * len(SECRET), "", SECRET.upper(),
                                       "Bearer " + SECRET, SECRET + "\u00e9"],
                         ids=["appended", "one-short", "prefix", "same-length", "empty", "other-case", "bearer",
                              "non-ascii"])
async def test_in_process_near_miss_tokens_are_403(route: Route, presented: str) -> None:
    route.store.put(SPEC, creds("ASIAFIRST"))
    status, _, body = await route.get({"Authorization": presented})
    assert status == 403
    assert json.loads(body) == {"code": "AccessDenied", "message": "invalid Authorization token",
                                "Code": "AccessDenied", "Message": "invalid Authorization token"}
    assert route.refusals() == {"token": 1}
    assert route.counted("metadata_proxy_requests_total", route="container", status="403") == 1


async def test_in_process_a_token_that_is_not_utf8_is_403_not_500(route: Route) -> None:
    """Header bytes that are not UTF-8 (aiohttp keeps them as surrogates) are compared, not a crash."""
    route.store.put(SPEC, creds("ASIAFIRST"))
    reader, writer = await asyncio.open_connection(route.client.host, route.client.port)
    writer.write(b"GET /v1/credentials/role-01 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " +
                 SECRET.encode() + b"\xff\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n"), answer


async def test_in_process_no_token_is_401_and_another_method_405(route: Route) -> None:
    route.store.put(SPEC, creds("ASIAFIRST"))
    status, _, body = await route.get()
    assert status == 401
    assert json.loads(body) == {"code": "Unauthorized", "message": "missing Authorization header",
                                "Code": "Unauthorized", "Message": "missing Authorization header"}
    assert route.refusals() == {"token": 1}
    assert route.counted("metadata_proxy_requests_total", route="container", status="401") == 1
    status, headers, body = await route.get({"Authorization": SECRET}, method="POST")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")
    assert json.loads(body) == {"code": "MethodNotAllowed", "message": "use GET",
                                "Code": "MethodNotAllowed", "Message": "use GET"}
    assert route.refusals() == {"token": 1, "method": 1}
    assert route.counted("metadata_proxy_requests_total", route="container", status="405") == 1


async def test_in_process_without_credentials_503_says_why(route: Route) -> None:
    status, _, body = await route.get({"Authorization": SECRET})
    assert status == 503
    prefix = "metadata-proxy has no valid credentials for arn:aws:iam::111111111111:role/role-01: "
    assert json.loads(body) == {"code": "CredentialsUnavailable", "message": prefix + "no valid credentials are cached",
                                "Code": "CredentialsUnavailable", "Message": prefix + "no valid credentials are cached"}
    route.state.last_error = StsError("Throttling", "Rate exceeded", transient=True, role_arn=ROLE_ARN)
    status, _, body = await route.get({"Authorization": SECRET})
    assert (status, json.loads(body)["message"]) == (503, prefix + "AssumeRole failed: Throttling: Rate exceeded")
    assert route.counted("metadata_proxy_requests_total", route="container", status="503") == 2
    assert route.refusals() == {}


# --- real clients through the two variables ---

@pytest.fixture
def container_env(tmp_path: Path, full_uri: str, token_file: Path) -> Callable[..., dict[str, str]]:
    def make(by: str = "file") -> dict[str, str]:
        if by == "file":
            return client_env(tmp_path, AWS_CONTAINER_CREDENTIALS_FULL_URI=full_uri,
                              AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token_file))
        return client_env(tmp_path, AWS_CONTAINER_CREDENTIALS_FULL_URI=full_uri,
                          AWS_CONTAINER_AUTHORIZATION_TOKEN=token_file.read_text())
    return make


@pytest.mark.parametrize("by", ["file", "env"])
def test_boto3_uses_the_container_provider(world: World, container_env, by: str) -> None:
    result = subprocess.run([sys.executable, "-c", BOTO3_PROBE, world.moto_url], env=container_env(by),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["method"] == "container-role" and ROLE_01_SESSION.match(probe["arn"])


@pytest.mark.parametrize("by", ["file", "env"])
def test_aws_cli_lists_the_bucket(world: World, container_env, by: str) -> None:
    result = aws("s3", "ls", "s3://foobar/", "--endpoint-url", world.moto_url, "--region", scenario.REGION,
                 env=container_env(by))
    assert result.returncode == 0, result.stderr
    assert listing_rows(result.stdout) == scenario.EXPECTED_LISTING


@pytest.mark.parametrize("by", ["file", "env"])
def test_js_sdk_v3_default_chain(world: World, container_env, by: str) -> None:
    """§7.1: JS prefers the FILE variable (3.972.88+), the legacy fallback only the env token; cover both."""
    if node() is None or not (JS_DIR / "node_modules").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI must install the JS client: npm ci --prefix tests/js")
        pytest.skip("run `npm ci --prefix tests/js` to include the JavaScript SDK")
    result = subprocess.run([node(), str(JS_DIR / "whoami.mjs"), world.moto_url, scenario.BUCKET],
                            env=container_env(by), capture_output=True, text=True, timeout=120, cwd=JS_DIR)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert ROLE_01_SESSION.match(probe["arn"])


def test_operator_token_file_with_a_newline_stops_the_start(start_daemon, tmp_path: Path) -> None:
    """A token file with a newline would break every botocore client (§9): refuse it with one line, exit 2."""
    bad = tmp_path / "bad.token"
    bad.write_text("a-token-with-a-newline-0123\n")
    bad.chmod(0o600)
    process = start_daemon("--container-credentials", "--container-token-file", str(bad))
    assert process.wait_ready() is None
    assert process.wait() == 2
    (line,) = [x for x in process.stderr_lines if x.startswith("metadata-proxy: error:")]
    assert "newline" in line and str(bad) in line


# --- consumers running as another user: the token group ---

# A consumer as another user, in the given primary group: botocore's default chain, unmodified, reading the
# token file named by AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE. The child drops to that user itself, after its
# imports and a first request (so botocore has loaded its modules and data files): the interpreter and its
# packages may live where only root may read (a home directory), and what matters is who reads the token file.
CONSUMER_PROBE = f"""
import json, os, sys
import botocore.exceptions, botocore.session
session = botocore.session.get_session()
session.set_config_variable("region", "{scenario.REGION}")
try:  # a first request loads every module a request needs (urllib3, idna, the XML parser)
    session.create_client("sts", endpoint_url=sys.argv[1], aws_access_key_id="AKIAUNUSED",
                          aws_secret_access_key="unused").get_caller_identity()
except botocore.exceptions.ClientError:
    pass
os.setgroups([]); os.setgid(int(sys.argv[2])); os.setuid({NOBODY})
credentials = session.get_credentials()
sts = session.create_client("sts", endpoint_url=sys.argv[1], aws_access_key_id=credentials.access_key,
                            aws_secret_access_key=credentials.secret_key, aws_session_token=credentials.token)
print(json.dumps({{"uid": os.getuid(), "method": credentials.method, "arn": sts.get_caller_identity()["Arn"]}}))
"""


def test_a_consumer_in_the_token_group_gets_the_role_and_one_outside_it_is_denied(start_daemon, world: World) -> None:
    """The daemon (root here) makes its default token directory 0700: with --container-token-group the file
    is 0640 with that group and the directory 0710, so a consumer running as nobody in that group reads the
    token and gets role-01; nobody in its own group (the near-miss) gets "Permission denied"."""
    needs_root()
    (group,) = unused_gids(1)
    with reachable_dir() as runtime:
        process = start_daemon("--container-credentials", "--container-token-group", str(group),
                               env={"XDG_RUNTIME_DIR": str(runtime)})
        assert process.wait_ready(), process.stderr
        token_file = Path(process.export("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"))
        assert token_file == runtime / "metadata-proxy" / "role-01.token"
        assert (stat.S_IMODE(token_file.stat().st_mode), token_file.stat().st_gid) == (0o640, group)
        directory = token_file.parent.stat()
        assert (stat.S_IMODE(directory.st_mode), directory.st_gid) == (0o710, group)
        env = client_env(runtime / "consumer", AWS_EC2_METADATA_DISABLED="true",
                         AWS_CONTAINER_CREDENTIALS_FULL_URI=process.export("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
                         AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token_file))

        member = run([sys.executable, "-c", CONSUMER_PROBE, world.moto_url, str(group)], env)
        assert member.returncode == 0, member.stderr
        probe = json.loads(member.stdout)
        assert probe["uid"] == NOBODY and probe["method"] == "container-role" and ROLE_01_SESSION.match(probe["arn"])

        outsider = run([sys.executable, "-c", CONSUMER_PROBE, world.moto_url, str(NOBODY)], env)
        assert outsider.returncode != 0 and outsider.stdout == ""
        assert f"PermissionError: [Errno 13] Permission denied: '{token_file}'" in outsider.stderr
