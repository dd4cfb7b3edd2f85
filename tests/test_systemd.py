"""The systemd unit, its examples, and the sd_notify conversation with a fake NOTIFY_SOCKET."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from metadata_proxy import scenario
from metadata_proxy.addresses import DEFAULT_PORT
from metadata_proxy.cli_parser import build_parser
from metadata_proxy.config import load_serve_config
from metadata_proxy.notify import Notifier
from tests.conftest import World, launch
from tests.support.notify import NotifySocket
from tests.support.processes import BIN, daemon_env, run

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "metadata-proxy.service"


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_analyze_verify_is_silent() -> None:
    """Verified as shipped, with the documented install in place: /opt/metadata-proxy/bin/metadata-proxy,
    which a private mount namespace provides (as root; CI runs as root)."""
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is missing: .ci/run installs the systemd package")
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root for a private mount namespace")
    script = ('mount -t tmpfs tmpfs /opt && mkdir -p /opt/metadata-proxy/bin && '
              f'ln -s {BIN / "metadata-proxy"} /opt/metadata-proxy/bin/metadata-proxy && '
              f'exec systemd-analyze verify {UNIT}')
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # warnings only show as output, with exit 0


def test_unit_is_notify_typed_and_hardened() -> None:
    s = unit_settings(UNIT)
    expected = {"Type": "notify", "DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                "PrivateTmp": "yes", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
                "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "LockPersonality": "yes",
                "RestrictNamespaces": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
                "ProtectKernelLogs": "yes", "MemoryDenyWriteExecute": "yes", "Restart": "on-failure",
                "EnvironmentFile": "-/etc/metadata-proxy/env", "RestartPreventExitStatus": "2 4",
                "SyslogLevelPrefix": "yes", "StartLimitIntervalSec": "5min", "StartLimitBurst": "10"}
    for key, value in expected.items():
        assert s[key] == [value], key
    # Validate, then signal: the first failing ExecReload= fails `systemctl reload` and skips the rest.
    assert s["ExecReload"] == ["/opt/metadata-proxy/bin/metadata-proxy check-config --config "
                               "/etc/metadata-proxy/config.toml", "/bin/kill -HUP $MAINPID"]
    assert s["ExecStart"] == ["/opt/metadata-proxy/bin/metadata-proxy serve --config /etc/metadata-proxy/config.toml"]
    assert "@system-service" in s["SystemCallFilter"]
    assert int(s["RestartSec"][0]) >= 1 and s["WatchdogSec"]
    assert "--config /etc/metadata-proxy/config.toml" in s["ExecStart"][0]


def test_examples_point_at_the_default_endpoint(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{DEFAULT_PORT}/"
    dropin = unit_settings(SYSTEMD / "examples" / "my-app.service.d-metadata-proxy.conf")
    assert dropin["After"] == dropin["Wants"] == ["metadata-proxy.service"]
    assert f"AWS_EC2_METADATA_SERVICE_ENDPOINT={endpoint}" in dropin["Environment"]
    assert "NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost" in dropin["Environment"]
    snippet = SYSTEMD / "examples" / "metadata-proxy.sh"
    show = f'. {snippet}; echo "$AWS_EC2_METADATA_SERVICE_ENDPOINT $NO_PROXY $no_proxy"'
    for upper, lower, expected in (
            ("", "", ["127.0.0.1,localhost", "127.0.0.1,localhost"]),
            ("corp.example", "", ["corp.example,127.0.0.1,localhost", "127.0.0.1,localhost"]),
            ("", "corp.example", ["127.0.0.1,localhost", "corp.example,127.0.0.1,localhost"]),
            ("127.0.0.1", "x,127.0.0.1", ["127.0.0.1", "x,127.0.0.1"])):
        out = subprocess.run(["sh", "-c", show], env={"PATH": "/usr/bin:/bin", "NO_PROXY": upper, "no_proxy": lower},
                             capture_output=True, text=True)
        assert out.stdout.split() == [endpoint, *expected]
    config = load_serve_config(build_parser().parse_args(["serve", "--config", str(SYSTEMD / "examples" /
                                                                                   "config.toml")]), {})
    assert config.roles[0].port == DEFAULT_PORT and config.admin_port


@pytest.mark.parametrize(("version", "refused"), [((3, 10, 13), True), ((3, 11, 0), False), ((3, 13, 1), False)])
def test_the_python_check_refuses_python_before_3_11(version: tuple[int, int, int], refused: bool) -> None:
    """The README's first install command, under an interpreter that reports another version (what it
    says without the venv module is checked in the booted Debian, tests/test_systemd_booted.py)."""
    script = (f"import runpy, sys; sys.version_info = {version!r}; "
              f"runpy.run_path({str(SYSTEMD / 'check-python.py')!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    if refused:
        assert result.returncode == 1
        assert result.stderr.startswith("metadata-proxy needs Python 3.11 or newer with its venv module, and this "
                                        "is Python 3.10 (Debian/Ubuntu: sudo apt install python3-venv; ")
        assert len(result.stderr.splitlines()) == 1
    else:
        assert (result.returncode, result.stderr) == (0, "")


def check_config(world: World, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """check-config with the daemon's environment: source credentials and an STS endpoint it must not call."""
    env = daemon_env(tmp_path, **world.source.environ(), METADATA_PROXY_STS_ENDPOINT_URL=world.sts_url)
    return run([sys.executable, "-m", "metadata_proxy", "check-config", *args], env)


def test_check_config_accepts_the_example_and_calls_no_aws_api(world: World, tmp_path: Path) -> None:
    result = check_config(world, tmp_path, "--config", str(SYSTEMD / "examples" / "config.toml"))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert sum(world.proxy.calls.values()) == 0


@pytest.mark.parametrize(("content", "reason"), [
    ('role_arn = "arn:aws:iam::111111110001:role/role-01"\nport = "x"\n', "port: expected a whole number, got str 'x'"),
    ('role_arn = "arn:aws:iam::111111110001:role/role-01"\nport = 9254\nprot = 1\n', "unknown key"),
    ('role_arn = "arn:aws:iam::111111110001:role/role-01"\nport = 65536\n', "port"),
    ('role_arn = "arn:aws:iam::111111110001:role/role-01"\nport = [\n', "TOML"),
])
def test_check_config_rejects_a_bad_file_in_one_line(world: World, tmp_path: Path, content: str,
                                                     reason: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(content)
    result = check_config(world, tmp_path, "--config", str(config))
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"metadata-proxy: error: {config}") and reason in line, line
    assert sum(world.proxy.calls.values()) == 0
    missing = check_config(world, tmp_path, "--config", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2
    assert missing.stderr == f"metadata-proxy: error: cannot read config file {tmp_path / 'absent.toml'}: No such " \
                             "file or directory\n"


def test_notifier_speaks_to_abstract_sockets_and_reads_the_watchdog_settings() -> None:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0metadata-proxy-test-notify")
        notifier = Notifier({"NOTIFY_SOCKET": "@metadata-proxy-test-notify", "WATCHDOG_USEC": "4000000",
                             "WATCHDOG_PID": str(os.getpid())})
        notifier.send("READY=1", "STATUS=x")
        assert listener.recv(100) == b"READY=1\nSTATUS=x"
        assert notifier.watchdog_interval == 2.0
        notifier.close()
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None  # not ours
    Notifier({}).send("READY=1")  # not under systemd: nothing happens


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


def test_ready_only_after_the_first_assume_role_then_status_reload_and_stopping(
        world: World, tmp_path: Path, notify: NotifySocket) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'role_arn = "{scenario.ROLE_01_ARN}"\nport = 0\n')
    gate = world.proxy.hold("AssumeRole")
    process = launch(world, tmp_path, "--config", str(config), role_arn=None, env={"NOTIFY_SOCKET": notify.path})
    try:
        assert world.proxy.wait_for_calls("AssumeRole", 1)  # the prefetch is parked at the proxy...
        assert not any("READY" in m for m in notify.pending())  # ...and nothing said ready
        gate.set()
        ready = notify.wait_for("READY", "1")
        assert ready["STATUS"].startswith("serving role-01 on http://127.0.0.1:") and "last refresh" in ready["STATUS"]
        assert process.wait_ready()

        process.proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1")
        notify.wait_for("READY", "1")
    finally:
        assert process.stop() == 0
    stopping = notify.wait_for("STOPPING", "1")
    assert stopping["STATUS"] == "stopping"


def test_watchdog_pings_when_systemd_asks(world: World, tmp_path: Path, notify: NotifySocket) -> None:
    process = launch(world, tmp_path, env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    try:
        assert process.wait_ready()
        notify.wait_for("WATCHDOG", "1")
        notify.wait_for("WATCHDOG", "1")
    finally:
        process.stop()


def test_no_watchdog_pings_unless_asked(world: World, tmp_path: Path, notify: NotifySocket) -> None:
    process = launch(world, tmp_path, env={"NOTIFY_SOCKET": notify.path})
    try:
        assert process.wait_ready()
    finally:
        process.stop()
    notify.wait_for("STOPPING", "1")
    assert not any("WATCHDOG" in m for m in notify.messages)
