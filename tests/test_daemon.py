"""Start-up, failure and shutdown paths of the real `metadata-proxy serve` process.

Whatever goes wrong, the user sees one line that says what and what to check, and never a traceback.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from metadata_proxy import scenario
from tests.conftest import World
from tests.support.http import get, token
from tests.support.net import free_port
from tests.support.processes import DaemonProcess, daemon_env, run

StartDaemon = Callable[..., DaemonProcess]


def error_lines(process: DaemonProcess) -> list[str]:
    return [line for line in process.stderr_lines if line.startswith("metadata-proxy: error:")]


def assert_clean_failure(process: DaemonProcess, code: int = 1) -> str:
    """Exited with code, never became ready, printed exactly one error line and no traceback."""
    assert process.wait_ready() is None
    assert process.wait() == code
    assert "Traceback" not in process.stderr
    (line,) = error_lines(process)
    return line



def test_transient_sts_errors_at_start_are_retried_until_ready(start_daemon: StartDaemon, world: World) -> None:
    """Issue: at start, throttling, 5xx and connection resets are retried; each failure is logged with its code."""
    world.proxy.fail_next("AssumeRole", "throttle", "503", "reset")
    process = start_daemon()
    url = process.wait_ready()
    assert url is not None, process.stderr
    assert world.proxy.calls["AssumeRole"] == 4
    assert get(url, "/latest/meta-data/iam/security-credentials/role-01", token(url)).status == 200
    assert process.stop() == 0
    for code in ("Throttling", "ServiceUnavailable", "ConnectionError"):
        assert f"failed: {code}" in process.stderr
    assert "Traceback" not in process.stderr


def test_access_denied_by_policy_02_exits_with_one_line(start_daemon: StartDaemon, world: World) -> None:
    """moto enforces policy-02: role-02 may assume role-01 only, so another role is AccessDenied."""
    process = start_daemon(role_arn=f"arn:aws:iam::{scenario.ACCOUNT_A}:role/role-03")
    line = assert_clean_failure(process, code=4)  # permanent: systemd's unit does not restart it
    assert "AccessDenied" in line
    assert f"trust policy of arn:aws:iam::{scenario.ACCOUNT_A}:role/role-03" in line and "role-01" not in line
    assert world.proxy.calls["AssumeRole"] == 1  # permanent: not retried


def test_cross_account_trust_denial_exits_with_one_line(start_daemon: StartDaemon, world: World) -> None:
    """moto cannot deny on role-01's trust policy (another account); the fault proxy plays STS's answer."""
    world.proxy.outage("AssumeRole", "denied")
    line = assert_clean_failure(start_daemon(), code=4)
    assert "AccessDenied" in line and "trust policy" in line


def test_invalid_source_credentials_exit_with_one_line(start_daemon: StartDaemon) -> None:
    bogus = {"AWS_ACCESS_KEY_ID": "ASIAEXAMPLEEXAMPLE00", "AWS_SECRET_ACCESS_KEY": "x" * 40,
             "AWS_SESSION_TOKEN": "bogus"}
    line = assert_clean_failure(start_daemon(env=bogus), code=4)
    assert "InvalidClientTokenId" in line and "source credentials" in line


def test_no_source_credentials_and_a_self_pointing_endpoint(world: World, tmp_path: Path) -> None:
    """Issue §3: the endpoint variable aimed at the daemon itself is ignored for its own chain; with nothing
    else, it exits with one line. As root it runs in a network namespace with only loopback (so the
    default chain's last step, the real IMDS, is unreachable); otherwise IMDS is disabled for it."""
    port = free_port()
    own = f"http://127.0.0.1:{port}/"
    env = daemon_env(tmp_path, AWS_EC2_METADATA_SERVICE_ENDPOINT=own, AWS_CONTAINER_CREDENTIALS_FULL_URI=own + "c")
    args = ["serve", "--role-arn", scenario.ROLE_01_ARN, "--port", str(port), "--sts-endpoint-url", world.sts_url]
    wrapper: tuple[str, ...] = ()
    if os.geteuid() == 0 and shutil.which("unshare") and run(["unshare", "-n", "true"], env).returncode == 0:
        del env["AWS_EC2_METADATA_DISABLED"]
        wrapper = ("unshare", "-n", "--", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh")
    process = DaemonProcess(args, env, wrapper)
    line = assert_clean_failure(process)
    assert "no source credentials" in line
    assert "ignoring AWS_EC2_METADATA_SERVICE_ENDPOINT" in process.stderr
    assert "ignoring AWS_CONTAINER_CREDENTIALS_FULL_URI" in process.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly(start_daemon: StartDaemon, signum: int) -> None:
    """Issue §7: stop accepting, finish in-flight requests, exit 0."""
    process = start_daemon()
    url = process.wait_ready()
    assert url
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    assert process.stop(signum) == 0
    assert "stopping" in process.stderr and "Traceback" not in process.stderr
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_port_in_use_exits_with_one_line(start_daemon: StartDaemon) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = assert_clean_failure(start_daemon("--port", str(port)))
    assert f"port {port}" in line and "in use" in line


def test_non_loopback_bind_needs_the_explicit_flag(start_daemon: StartDaemon) -> None:
    """Issue §6: loopback only unless --allow-non-loopback, which is then warned about in the log."""
    line = assert_clean_failure(start_daemon("--host", "0.0.0.0"), code=2)
    assert "--allow-non-loopback" in line
    process = start_daemon("--host", "0.0.0.0", "--allow-non-loopback")
    url = process.wait_ready()
    assert url and url.startswith("http://0.0.0.0:")
    port = url.rstrip("/").rsplit(":", 1)[1]
    assert get(f"http://127.0.0.1:{port}/", "/latest/meta-data/iam/security-credentials/",
               token(f"http://127.0.0.1:{port}/")).text == "role-01"
    assert process.stop() == 0
    assert "WARNING" in process.stderr and "non-loopback" in process.stderr


def test_ipv6_loopback(start_daemon: StartDaemon) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this machine")
    process = start_daemon("--host", "::1")
    url = process.wait_ready()
    assert url and url.startswith("http://[::1]:")
    assert get(url, "/latest/meta-data/iam/security-credentials/", token(url)).text == "role-01"


SOURCE_PROFILES = """
[profile expired-sso]
sso_start_url = https://example.awsapps.com/start
sso_region = us-east-1
sso_account_id = 111111110002
sso_role_name = reader

[profile needs-mfa]
role_arn = arn:aws:iam::111111110002:role/role-02
source_profile = keys
mfa_serial = arn:aws:iam::111111110002:mfa/operator

[profile keys]
aws_access_key_id = AKIAEXAMPLEEXAMPLE00
aws_secret_access_key = secret
"""


@pytest.mark.parametrize(("profile", "fix"), [
    ("expired-sso", "run `aws sso login --profile expired-sso`"),
    ("needs-mfa", "the profile needs-mfa needs an MFA code (mfa_serial)"),
])
def test_source_profiles_that_retrying_cannot_heal_exit_4_at_start(start_daemon: StartDaemon, world: World,
                                                                   tmp_path: Path, profile: str, fix: str) -> None:
    """They used to retry forever, with a 15-line botocore traceback each time."""
    config = tmp_path / "aws-config"
    config.write_text(SOURCE_PROFILES)
    process = start_daemon(env={"AWS_CONFIG_FILE": str(config), "AWS_PROFILE": profile}, source=False)
    line = assert_clean_failure(process, code=4)
    assert fix in line
    assert world.proxy.calls["AssumeRole"] == 0
