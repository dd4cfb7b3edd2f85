"""`metadata-proxy credential-process` behind a `credential_process` profile in ~/.aws/config: the real AWS
CLI v1 and v2 and boto3 get role-01 through it, by the container endpoint (the daemon's settings and a
readable token file) or IMDS (--url); it loads neither boto3 nor aiohttp; failures are one line on stderr
without a secret; --role picks one of several roles."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from metadata_proxy import scenario
from metadata_proxy.config import RoleConfig
from metadata_proxy.demo import listing_rows
from tests.conftest import World, launch
from tests.e2e.test_cli_v2 import cli
from tests.support.fakeclock import FakeClock
from tests.support.http import get
from tests.support.net import free_port
from tests.support.processes import BOTO3_PROBE, ROLE_01_SESSION, DaemonProcess, client_env, run

# The served document must have exactly these fields (Version 1 of the credential_process format).
PROCESS_FIELDS = {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
HEAVY = ("boto3", "botocore", "aiohttp", "cachetools", "prometheus_client")


@dataclass(frozen=True)
class Served:
    process: DaemonProcess
    config: Path
    admin: str

    @property
    def url(self) -> str:
        assert self.process.url
        return self.process.url

    def arguments(self, protocol: str) -> str:
        """credential-process's arguments: the daemon's config file (container endpoint, as the token file is
        readable here), or --url (IMDS)."""
        return f"--config {self.config}" if protocol == "container" else f"--url {self.url}"

    def credential_requests(self) -> dict[str, float]:
        """Credential documents served so far, by protocol."""
        text = get(self.admin, "/metrics").text
        counts = {"container": 0.0, "imds": 0.0}
        for line in text.splitlines():
            if line.startswith("metadata_proxy_requests_total{") and 'status="200"' in line:
                route = line.split('route="', 1)[1].split('"', 1)[0]
                protocol = {"container": "container", "credentials": "imds"}.get(route)
                if protocol:
                    counts[protocol] += float(line.rsplit(" ", 1)[1])
        return counts


def write_config(path: Path, world: World, roles: str, **top: object) -> Path:
    lines = [f'region = "{scenario.REGION}"', f'sts_endpoint_url = "{world.sts_url}"',
             *(f"{key} = {json.dumps(value)}" for key, value in top.items()), roles]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def served(session_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """role-01 on both protocols, started from the config file that credential-process reads too."""
    home = tmp_path_factory.mktemp("credential-process")
    admin_port = free_port()
    config = write_config(home / "config.toml", session_world, f"""
[[role]]
role_arn = "{scenario.ROLE_01_ARN}"
port = {free_port()}
container_token_file = "role-01.token"
""", container_credentials=True, admin_port=admin_port)
    process = launch(session_world, home, "--config", str(config), role_arn=None)
    assert process.wait_ready(), process.stderr
    yield Served(process, config, f"http://127.0.0.1:{admin_port}/")
    process.stop()


def profile_env(home: Path, arguments: str) -> dict[str, str]:
    """A client whose default profile is `credential_process = metadata-proxy credential-process ARGS`, and
    nothing else: IMDS is off, so the process is the only way to credentials."""
    config = home / "aws-config"
    config.write_text(f"[default]\ncredential_process = metadata-proxy credential-process {arguments}\n")
    return client_env(home, AWS_CONFIG_FILE=str(config), AWS_EC2_METADATA_DISABLED="true")


def credential_process(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "metadata_proxy", "credential-process", *args], client_env(home))


def assert_through(served: Served, protocol: str, before: dict[str, float]) -> None:
    after = served.credential_requests()
    other = "imds" if protocol == "container" else "container"
    assert after[protocol] > before[protocol] and after[other] == before[other]


@pytest.mark.parametrize("protocol", ["container", "imds"])
def test_aws_cli_v1_with_a_credential_process_profile(served: Served, world: World, tmp_path: Path,
                                                      protocol: str) -> None:
    before = served.credential_requests()
    env = profile_env(tmp_path, served.arguments(protocol))
    identity = cli(Path(sys.executable).parent / "aws", world, env, "sts", "get-caller-identity")
    assert identity.returncode == 0, identity.stderr
    assert ROLE_01_SESSION.match(json.loads(identity.stdout)["Arn"])
    listing = cli(Path(sys.executable).parent / "aws", world, env, "s3", "ls", f"s3://{scenario.BUCKET}/")
    assert listing.returncode == 0, listing.stderr
    assert listing_rows(listing.stdout) == scenario.EXPECTED_LISTING
    assert_through(served, protocol, before)


@pytest.mark.parametrize("protocol", ["container", "imds"])
def test_aws_cli_v2_with_a_credential_process_profile(aws_cli_v2: Path, served: Served, world: World,
                                                      tmp_path: Path, protocol: str) -> None:
    before = served.credential_requests()
    identity = cli(aws_cli_v2, world, profile_env(tmp_path, served.arguments(protocol)), "sts", "get-caller-identity")
    assert identity.returncode == 0, identity.stderr
    assert ROLE_01_SESSION.match(json.loads(identity.stdout)["Arn"])
    assert_through(served, protocol, before)


@pytest.mark.parametrize("protocol", ["container", "imds"])
def test_boto3_with_a_credential_process_profile(served: Served, world: World, tmp_path: Path,
                                                 protocol: str) -> None:
    before = served.credential_requests()
    result = run([sys.executable, "-c", BOTO3_PROBE, world.moto_url], profile_env(tmp_path, served.arguments(protocol)))
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["method"] == "custom-process" and ROLE_01_SESSION.match(probe["arn"])
    assert_through(served, protocol, before)


# Runs the command as the console script does, then reports which heavy packages got imported.
IMPORTS_PROBE = f"""
import json, sys
from metadata_proxy.cli import main
code = main(["credential-process", *sys.argv[1:]])
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY!r})))
sys.exit(code)
"""


@pytest.mark.parametrize("protocol", ["container", "imds"])
def test_prints_version_1_and_imports_neither_boto3_nor_aiohttp(served: Served, tmp_path: Path,
                                                                protocol: str) -> None:
    result = run([sys.executable, "-c", IMPORTS_PROBE, *served.arguments(protocol).split()], client_env(tmp_path))
    assert result.returncode == 0, result.stderr
    document, modules = result.stdout.splitlines()
    assert json.loads(modules) == []
    credentials = json.loads(document)
    assert set(credentials) == PROCESS_FIELDS and credentials["Version"] == 1
    assert credentials["Expiration"].endswith("Z") and credentials["AccessKeyId"].startswith("ASIA")


@pytest.mark.parametrize("protocol", ["container", "imds"])
async def test_a_daemon_without_valid_credentials_is_one_line_and_exit_1(
        in_process_daemon, clock: FakeClock, world: World, tmp_path: Path, protocol: str) -> None:
    """STS has refused every refresh until the last credentials left the cache: the daemon serves none, and
    the SDK would show the user this command's stderr: one line with STS's code, and no secret."""
    token_file = tmp_path / "role-01.token"
    role = RoleConfig(role_arn=scenario.ROLE_01_ARN, port=0, role_session_name="test-session",
                      container_token_file=str(token_file))
    async with in_process_daemon(container_credentials=True, roles=(role,)) as daemon:
        (listener,) = daemon.listeners
        (state,) = daemon.refresher.states.values()
        served = daemon.store.get(state.spec)
        world.proxy.outage("AssumeRole", "throttle")
        while daemon.store.get(state.spec) is not None:
            clock.advance_to(state.next_attempt)
            await daemon.refresher.wait_for(lambda: state.next_attempt > clock.now)
        config = write_config(tmp_path / "config.toml", world, f"""
[[role]]
role_arn = "{scenario.ROLE_01_ARN}"
port = {listener.port}
container_token_file = "{token_file}"
""", container_credentials=True)
        arguments = ["--config", str(config)] if protocol == "container" else ["--url", listener.url]
        result = await asyncio.to_thread(credential_process, tmp_path, *arguments)
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("metadata-proxy credential-process: ")
    assert "no valid credentials" in line and "Throttling" in line
    for secret in (served.access_key_id, served.secret_access_key, served.session_token, token_file.read_text()):
        assert secret not in result.stderr


def test_no_daemon_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    result = credential_process(tmp_path, "--url", url)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"metadata-proxy credential-process: cannot connect to {url}latest/api/token: "
                             "connection refused (is the daemon running there?)\n")


# --- a daemon serving several roles ---

@pytest.fixture(scope="module")
def two_roles(session_world: World, role_04: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("two-roles")
    config = write_config(home / "config.toml", session_world, f"""
[[role]]
role_arn = "{scenario.ROLE_01_ARN}"
port = {free_port()}
container_token_file = "role-01.token"

[[role]]
name = "reader"
role_arn = "{role_04}"
port = {free_port()}
container_token_file = "reader.token"
""", container_credentials=True)
    process = launch(session_world, home, "--config", str(config), role_arn=None)
    assert process.wait_ready(), process.stderr
    yield Served(process, config, "")
    process.stop()


def identity_of(result: subprocess.CompletedProcess[str], world: World) -> str:
    assert result.returncode == 0, result.stderr
    credentials = json.loads(result.stdout)
    sts = boto3.client("sts", endpoint_url=world.moto_url, region_name=scenario.REGION,
                       aws_access_key_id=credentials["AccessKeyId"],
                       aws_secret_access_key=credentials["SecretAccessKey"],
                       aws_session_token=credentials["SessionToken"])
    return sts.get_caller_identity()["Arn"]


def test_role_picks_one_of_several_roles(two_roles: Served, world: World, tmp_path: Path) -> None:
    config = str(two_roles.config)
    reader = identity_of(credential_process(tmp_path, "--config", config, "--role", "reader"), world)
    assert reader.startswith(f"arn:aws:sts::{scenario.ACCOUNT_A}:assumed-role/role-04/")
    role_01 = identity_of(credential_process(tmp_path, "--config", config, "--role", "role-01"), world)
    assert ROLE_01_SESSION.match(role_01)


def test_several_roles_without_role_or_with_an_unknown_one_is_exit_2(two_roles: Served, tmp_path: Path) -> None:
    config = str(two_roles.config)
    unnamed = credential_process(tmp_path, "--config", config)
    assert unnamed.returncode == 2 and unnamed.stderr == (
        "metadata-proxy: error: the daemon serves several roles (role-01, reader): pick one with --role "
        "(see --help)\n")
    unknown = credential_process(tmp_path, "--config", config, "--role", "role-04")
    assert unknown.returncode == 2 and unknown.stderr == (
        "metadata-proxy: error: --role role-04: the daemon's settings name no such role (they name role-01, reader) "
        "(see --help)\n")


def test_role_with_url_must_be_the_role_served_there(two_roles: Served, world: World, tmp_path: Path) -> None:
    """Each role has its own IMDS listener: --url picks the listener, and --role must match what it serves."""
    url = two_roles.url  # role-01's listener, the first announced
    assert ROLE_01_SESSION.match(identity_of(credential_process(tmp_path, "--url", url, "--role", "role-01"), world))
    wrong = credential_process(tmp_path, "--url", url, "--role", "reader")
    assert wrong.returncode == 1 and wrong.stderr == f"metadata-proxy credential-process: {url} serves role-01, " \
                                                     "not reader\n"
