"""One daemon serving both protocols to the real clients, and the clients that must be built or found first."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import World, launch
from tests.support.processes import DaemonProcess, client_env

GO_SOURCE = Path(__file__).resolve().parent.parent / "go"
# Debian's golang-github-aws-aws-sdk-go-v2-dev: tests/go/go.mod points every SDK module here.
GO_SDK = Path("/usr/share/gocode/src/github.com/aws/aws-sdk-go-v2")
# The AWS CLI v2, from Debian's `awscli` package (the venv's `aws` is the v1 from PyPI).
AWS_CLI_V2 = Path("/usr/bin/aws")


@dataclass(frozen=True)
class Endpoints:
    """Where a client finds role-01: IMDS at imds_url, the container protocol at full_uri with token_file."""

    imds_url: str
    full_uri: str
    token_file: Path

    def imds(self, home: Path, **extra: str) -> dict[str, str]:
        return client_env(home, **{"AWS_EC2_METADATA_SERVICE_ENDPOINT": self.imds_url, **extra})

    def container(self, home: Path, by: str = "file", **extra: str) -> dict[str, str]:
        """by="file": AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE; by="env": the token itself in
        AWS_CONTAINER_AUTHORIZATION_TOKEN (clients that predate the file variable). IMDS is disabled, so a
        client that fails here cannot fall through to the real one."""
        token = ({"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(self.token_file)} if by == "file"
                 else {"AWS_CONTAINER_AUTHORIZATION_TOKEN": self.token_file.read_text()})
        return client_env(home, AWS_CONTAINER_CREDENTIALS_FULL_URI=self.full_uri, AWS_EC2_METADATA_DISABLED="true",
                          **token, **extra)


@pytest.fixture(scope="module")
def both_daemon(session_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    home = tmp_path_factory.mktemp("both")
    process = launch(session_world, home, "--container-credentials", "--container-token-file",
                     str(home / "role-01.token"))
    assert process.wait_ready(), process.stderr
    yield process
    process.stop()


@pytest.fixture(scope="module")
def endpoints(both_daemon: DaemonProcess) -> Endpoints:
    assert both_daemon.url
    return Endpoints(both_daemon.url, both_daemon.export("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
                     Path(both_daemon.export("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")))


def missing_client(reason: str) -> None:
    """Skips the test where a client's package is not installed; CI installs them all, so there it fails."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must install every client: {reason}")
    pytest.skip(reason)


@pytest.fixture
def aws_cli_v2() -> Path:
    if not AWS_CLI_V2.is_file():
        missing_client("the AWS CLI v2 is not installed: apt-get install awscli (Debian 12: 2.9.19)")
    return AWS_CLI_V2


@pytest.fixture(scope="session")
def go_whoami(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/go built once per session, offline, against Debian's packaged Go SDK v2."""
    go = shutil.which("go")
    if go is None or not GO_SDK.is_dir():
        missing_client("the Go SDK v2 is not installed: apt-get install golang-go golang-github-aws-aws-sdk-go-v2-dev")
    work = tmp_path_factory.mktemp("go")
    binary = work / "whoami"
    # GOPROXY=off and GOTOOLCHAIN=local: never the network (go.mod replaces every module by a local
    # directory, so there is nothing to download and no go.sum to check).
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "GOPATH": str(work / "gopath"),
           "GOCACHE": str(work / "cache"), "GOPROXY": "off", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    result = subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_SOURCE, env=env, capture_output=True,
                            text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return binary
