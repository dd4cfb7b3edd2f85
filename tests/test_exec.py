"""`metadata-proxy exec`: a command runs as role-01, keeps valid credentials past one session, and its exit
status and signals pass through."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from metadata_proxy import scenario
from metadata_proxy.config import RoleConfig, ServeConfig
from metadata_proxy.daemon import Daemon
from metadata_proxy.exec import run_exec
from tests.conftest import World
from tests.support.fakeclock import FakeClock
from tests.support.net import parse_time
from tests.support.notify import NotifySocket
from tests.support.processes import BIN, ROLE_01_SESSION, START_TIMEOUT, daemon_env, run


def exec_args(world: World, *rest: str) -> list[str]:
    return [sys.executable, "-m", "metadata_proxy", "exec", "--role-arn", scenario.ROLE_01_ARN,
            "--region", scenario.REGION, "--sts-endpoint-url", world.sts_url, *rest]


WHOAMI = """
import boto3
print(boto3.client("sts", region_name="us-east-1", endpoint_url=sys.argv[1]).get_caller_identity()["Arn"])
"""


def test_command_runs_as_role_01(world: World, tmp_path: Path) -> None:
    env = daemon_env(tmp_path, **world.source.environ())
    result = run(exec_args(world, "--", str(BIN / "aws"), "sts", "get-caller-identity", "--endpoint-url",
                           world.moto_url), env)
    assert result.returncode == 0, result.stderr
    assert ROLE_01_SESSION.match(json.loads(result.stdout)["Arn"])
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("code", [0, 3, 77])
def test_exit_status_passes_through(world: World, tmp_path: Path, code: int) -> None:
    result = run(exec_args(world, "--", "sh", "-c", f"exit {code}"), daemon_env(tmp_path, **world.source.environ()))
    assert result.returncode == code


def test_command_not_found_is_127_with_one_line(world: World, tmp_path: Path) -> None:
    result = run(exec_args(world, "--", "no-such-command-xyz"), daemon_env(tmp_path, **world.source.environ()))
    assert result.returncode == 127
    (line,) = result.stderr.splitlines()
    assert "command not found: no-such-command-xyz" in line


def test_exec_next_to_the_running_service_with_its_config(world: World, tmp_path: Path) -> None:
    """With the shipped example config (admin_port, allow-list, hop limit) while the service holds the admin
    port and runs under systemd: exec binds none of the service's listeners and passes on none of systemd's
    variables (the command would otherwise ping the service's watchdog)."""
    config = tmp_path / "config.toml"
    example = (Path(__file__).parent.parent / "systemd" / "examples" / "config.toml").read_text()
    with socket.socket() as service_admin:
        service_admin.bind(("127.0.0.1", 0))
        service_admin.listen()
        admin_port = service_admin.getsockname()[1]
        lines = [line for line in example.splitlines() if not line.startswith(("role_arn", "admin_port", "region"))]
        config.write_text("\n".join([f'role_arn = "{scenario.ROLE_01_ARN}"', f"admin_port = {admin_port}",
                                     "allow_uid = [12345]", "hop_limit = 1", *lines]) + "\n")
        notify = NotifySocket(tmp_path)
        env = daemon_env(tmp_path, **world.source.environ(), NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="30000000")
        probe = "import os, sys; print(sorted(k for k in os.environ if k in ('NOTIFY_SOCKET', 'WATCHDOG_USEC')))"
        try:
            result = run([sys.executable, "-m", "metadata_proxy", "exec", "--config", str(config),
                          "--region", scenario.REGION, "--sts-endpoint-url", world.sts_url, "--",
                          sys.executable, "-c", probe + "\n" + WHOAMI, world.moto_url], env)
            assert notify.pending() == []  # not a word to the service's systemd
        finally:
            notify.close()
    assert result.returncode == 0, result.stderr
    shown, arn = result.stdout.splitlines()[-2:]
    assert shown == "[]"
    assert ROLE_01_SESSION.match(arn)


def test_needs_a_command_or_env(world: World, tmp_path: Path) -> None:
    result = run(exec_args(world), daemon_env(tmp_path, **world.source.environ()))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1


TRAP = """
import signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
signal.signal(signal.SIGINT, lambda *_: sys.exit(43))
signal.signal(signal.SIGHUP, lambda *_: sys.exit(44))
print("ready", flush=True)
signal.pause()
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 42), (signal.SIGINT, 43), (signal.SIGHUP, 44)])
def test_signals_are_forwarded(world: World, tmp_path: Path, signum: int, code: int) -> None:
    process = subprocess.Popen(exec_args(world, "--", sys.executable, "-c", TRAP),
                               env=daemon_env(tmp_path, **world.source.environ()), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"  # the child is running and its handlers are set
    process.send_signal(signum)
    assert process.wait(timeout=START_TIMEOUT) == code


def test_env_prints_export_lines_that_work(world: World, tmp_path: Path) -> None:
    result = run(exec_args(world, "--env"), daemon_env(tmp_path, **world.source.environ()))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("=")[0] for line in lines[:5]] == [
        "export AWS_ACCESS_KEY_ID", "export AWS_SECRET_ACCESS_KEY", "export AWS_SESSION_TOKEN", "export AWS_REGION",
        "export AWS_DEFAULT_REGION"]
    assert lines[5].startswith("# arn:aws:sts::111111110001:assumed-role/role-01/") and "expires" in lines[5]
    script = result.stdout + f"\naws sts get-caller-identity --endpoint-url {world.moto_url}\n"
    shell = run(["sh", "-c", script], daemon_env(tmp_path / "shell"))
    assert shell.returncode == 0, shell.stderr
    assert ROLE_01_SESSION.match(json.loads(shell.stdout)["Arn"])


CHILD = """
import json, sys, botocore.session
def fetch():
    # a fresh SDK session each time: what a long-running program's SDK does when its credentials age
    creds = botocore.session.Session().get_credentials()
    expiry = creds._expiry_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"key": creds.get_frozen_credentials().access_key, "method": creds.method, "expiry": expiry}
with open(sys.argv[1], "w") as out:
    out.write(json.dumps(fetch()) + "\\n"); out.flush()
    with open(sys.argv[2]) as go:
        go.readline()
    out.write(json.dumps(fetch()) + "\\n"); out.flush()
"""



async def test_child_outliving_a_session_still_gets_valid_credentials(world: World, clock: FakeClock,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    """Two hours on the injected clock (two one-hour sessions) between the child's two fetches: the second
    fetch gets fresh credentials from the refresher, valid well past the first session's end."""
    for name, value in world.source.environ().items():
        monkeypatch.setenv(name, value)
    out, go = tmp_path / "out", tmp_path / "go"
    os.mkfifo(out)
    os.mkfifo(go)
    config = ServeConfig(roles=(RoleConfig(role_arn=scenario.ROLE_01_ARN, role_session_name="exec-test"),),
                         region=scenario.REGION, sts_endpoint_url=world.sts_url)
    daemons: list[Daemon] = []
    task = asyncio.create_task(run_exec(config, [sys.executable, "-c", CHILD, str(out), str(go)], clock,
                                        started=daemons.append))
    reader = await asyncio.to_thread(open, out)
    first = json.loads(await asyncio.to_thread(reader.readline))
    assert first["method"] == "container-role"
    (daemon,) = daemons
    states = daemon.refresher.states.values()
    for _ in range(2 * 60):
        clock.advance(60)
        await daemon.refresher.wait_for(lambda: all(s.next_attempt > clock.now for s in states))
    await asyncio.to_thread(Path(go).write_text, "go\n")
    second = json.loads(await asyncio.to_thread(reader.readline))
    reader.close()
    assert await task == 0
    assert clock.now > parse_time(first["expiry"])  # the first session is over...
    assert second["key"] != first["key"]
    assert parse_time(second["expiry"]) - clock.now >= 1800  # ...and the child holds a fresh one
