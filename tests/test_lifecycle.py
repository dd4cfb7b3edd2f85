"""The daemon's worst days, as a real process: signals at any moment, reloads that go wrong, bad files.

Whatever happens, the process never ends on a reload, keeps serving the running configuration, stops within
moments of SIGTERM with status 0, and never prints a traceback. Deadlines here (`wait(timeout=...)`) are far
below what the old behaviour took (the STS read timeout, the reload's 60 s wait), and far above what a stop
needs: they detect a hang, they do not measure speed.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from metadata_proxy import scenario
from tests.conftest import EVENT_LOOPS, World, launch
from tests.support.http import get, token
from tests.support.net import free_port
from tests.support.notify import NotifySocket
from tests.support.processes import DaemonProcess

CREDS = "/latest/meta-data/iam/security-credentials/"
STOP_DEADLINE = 15  # seconds: a stop that waited for STS (40 s here) or a reload's wait (60 s) misses it


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


def roles_config(path: Path, roles: list[tuple[str, int]], extra: str = "") -> Path:
    tables = "".join(f'\n[[role]]\nrole_arn = "{arn}"\nport = {port}\n' for arn, port in roles)
    path.write_text(extra + tables)
    return path


@pytest.fixture(params=EVENT_LOOPS)
def start(request: pytest.FixtureRequest):
    """Starts `serve --config FILE` on each event loop, reporting to a stand-in systemd."""

    def launch_with(world: World, home: Path, config: Path, notify: NotifySocket, *args: str,
                    env: dict[str, str] | None = None) -> DaemonProcess:
        return launch(world, home, "--config", str(config), *args, role_arn=None, loop=request.param,
                      env={"NOTIFY_SOCKET": notify.path, **(env or {})})

    return launch_with


def reload(process: DaemonProcess, notify: NotifySocket) -> str:
    """SIGHUP, then the STATUS that came with READY=1 once the reload was over."""
    process.proc.send_signal(signal.SIGHUP)
    notify.wait_for("RELOADING", "1")
    return notify.wait_for("READY", "1").get("STATUS", "")


def identity(url: str) -> str:
    return get(url, CREDS, token(url)).text


def stopped_cleanly(process: DaemonProcess) -> None:
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(timeout=STOP_DEADLINE) == 0, process.stderr
    assert process.wait() == 0
    assert "Traceback" not in process.stderr and "never retrieved" not in process.stderr, process.stderr


# --- reloads that go wrong keep the running configuration ---

def non_utf8_comment(config: Path) -> None:
    config.write_bytes(config.read_bytes() + "# caf\xe9 (Latin-1)\n".encode("latin-1"))


def fifo_instead_of_the_file(config: Path) -> None:
    config.unlink()
    os.mkfifo(config)  # nobody ever writes to it: reading it must not block the daemon


def token_directory_replaced_by_a_file(config: Path) -> None:
    runtime = config.parent / "runtime"
    for child in runtime.iterdir():
        child.unlink()
    runtime.rmdir()
    runtime.write_text("not a directory any more")


@pytest.mark.parametrize("spoil", [non_utf8_comment, fifo_instead_of_the_file, token_directory_replaced_by_a_file])
def test_a_reload_that_cannot_read_its_files_keeps_serving(start, world: World, tmp_path: Path, notify: NotifySocket,
                                                           spoil) -> None:
    port = free_port()
    config = roles_config(tmp_path / "config.toml", [(scenario.ROLE_01_ARN, port)], "container_credentials = true\n")
    (tmp_path / "runtime").mkdir(mode=0o700)
    process = start(world, tmp_path, config, notify, env={"RUNTIME_DIRECTORY": str(tmp_path / "runtime")})
    try:
        url = process.wait_ready()
        assert url and identity(url) == "role-01"
        spoil(config)
        status = reload(process, notify)
        assert "last reload rejected at" in status
        assert identity(url) == "role-01"  # still serving, on the same socket
    finally:
        stopped_cleanly(process)
    assert "reload failed, still running the previous configuration" in process.stderr


@pytest.mark.parametrize(("spoil", "reason"), [(non_utf8_comment, "line 5: not UTF-8 text (byte 0xe9)"),
                                               (fifo_instead_of_the_file, "not a regular file")])
def test_a_config_file_that_cannot_be_read_at_start_is_one_line_and_exit_2(start, world: World, tmp_path: Path,
                                                                            notify: NotifySocket, spoil,
                                                                            reason: str) -> None:
    config = roles_config(tmp_path / "config.toml", [(scenario.ROLE_01_ARN, free_port())])
    spoil(config)
    process = start(world, tmp_path, config, notify)
    assert process.proc.wait(timeout=STOP_DEADLINE) == 2
    assert process.wait_ready() is None
    assert "Traceback" not in process.stderr
    (line,) = [x for x in process.stderr_lines if x.startswith("metadata-proxy: error:")]
    assert str(config) in line and reason in line


def test_a_token_directory_that_is_a_file_at_start_is_one_line_and_exit_2(start, world: World, tmp_path: Path,
                                                                          notify: NotifySocket) -> None:
    runtime = tmp_path / "runtime"
    runtime.write_text("a file")
    config = roles_config(tmp_path / "config.toml", [(scenario.ROLE_01_ARN, free_port())],
                          "container_credentials = true\n")
    process = start(world, tmp_path, config, notify, env={"RUNTIME_DIRECTORY": str(runtime)})
    assert process.wait_ready() is None
    assert process.wait() == 2 and "Traceback" not in process.stderr
    assert f"cannot use {runtime} as the token directory" in process.stderr


# --- reloads that move roles between listeners ---

def test_a_renamed_role_keeps_its_port_and_swapped_ports_swap(start, world: World, role_04: str, tmp_path: Path,
                                                             notify: NotifySocket) -> None:
    """Changing role_arn on a kept port, and swapping two roles' ports, never bind a port that is held."""
    port_a, port_b = free_port(), free_port()
    url_a, url_b = f"http://127.0.0.1:{port_a}/", f"http://127.0.0.1:{port_b}/"
    config = roles_config(tmp_path / "config.toml", [(scenario.ROLE_01_ARN, port_a)])
    process = start(world, tmp_path, config, notify)
    try:
        assert process.wait_ready() == url_a
        roles_config(config, [(role_04, port_a)])
        assert "rejected" not in reload(process, notify)
        assert identity(url_a) == "role-04"
        roles_config(config, [(role_04, port_a), (scenario.ROLE_01_ARN, port_b)])
        assert "rejected" not in reload(process, notify)
        assert (identity(url_a), identity(url_b)) == ("role-04", "role-01")
        roles_config(config, [(role_04, port_b), (scenario.ROLE_01_ARN, port_a)])
        assert "rejected" not in reload(process, notify)
        assert (identity(url_a), identity(url_b)) == ("role-01", "role-04")
    finally:
        stopped_cleanly(process)
    assert "Address already in use" not in process.stderr


def test_a_failed_reload_leaves_no_token_file_behind(start, world: World, tmp_path: Path, notify: NotifySocket) -> None:
    """role-05 is refused by STS (policy-02 allows role-01 only): the reload fails and takes its token file back."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    config = roles_config(tmp_path / "config.toml", [(scenario.ROLE_01_ARN, free_port())],
                          "container_credentials = true\n")
    process = start(world, tmp_path, config, notify, env={"RUNTIME_DIRECTORY": str(runtime)})
    try:
        assert process.wait_ready()
        assert sorted(p.name for p in runtime.iterdir()) == ["role-01.token"]
        text = config.read_text() + f'\n[[role]]\nrole_arn = "arn:aws:iam::{scenario.ACCOUNT_A}:role/role-05"\n' \
                                    f"port = {free_port()}\n"
        config.write_text(text)
        status = reload(process, notify)
        assert "last reload rejected at" in status and "AccessDenied" in status
        assert sorted(p.name for p in runtime.iterdir()) == ["role-01.token"]
    finally:
        stopped_cleanly(process)


def test_a_reload_applies_a_new_sts_timeout_and_a_stop_ends_its_wait(start, world: World, tmp_path: Path,
                                                                    notify: NotifySocket) -> None:
    """sts_timeout used to be ignored on reload, and SIGTERM waited out the reload's 60 s wait for a new role.
    Reloading to 1 s while STS hangs: the new role's AssumeRole gives up after 1 s (not the 60 s the daemon
    started with), and SIGTERM then ends the waiting reload at once."""
    port = free_port()
    config = roles_config(tmp_path / "config.toml", [(scenario.ROLE_01_ARN, port)], "sts_timeout = 60\n")
    process = start(world, tmp_path, config, notify)
    try:
        assert process.wait_ready()
        world.proxy.outage("AssumeRole", "hang")
        roles_config(config, [(scenario.ROLE_01_ARN, port)], "sts_timeout = 1\nduration_seconds = 1800\n")
        process.proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1")
        assert process.wait_for_stderr("failed: Timeout", timeout=30), process.stderr
    finally:
        world.proxy.outage("AssumeRole", None)
        stopped_cleanly(process)
    assert "reload abandoned: stopping" in process.stderr


# --- signals at any moment ---

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_the_first_assume_role_hangs_is_prompt(start_daemon, world: World, signum: int) -> None:
    """With --sts-timeout 40 a stop used to wait 38 s for STS's read timeout, and logged a traceback."""
    world.proxy.outage("AssumeRole", "hang")
    process = start_daemon("--sts-timeout", "40")
    assert world.proxy.wait_for_calls("AssumeRole", 1)
    process.proc.send_signal(signum)
    assert process.proc.wait(timeout=STOP_DEADLINE) == 0
    assert process.wait_ready() is None and process.wait() == 0
    assert "stopped before the first credentials arrived" in process.stderr
    assert "Traceback" not in process.stderr and "never retrieved" not in process.stderr


def loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_sighup_while_starting_does_not_end_the_process(start_daemon) -> None:
    """A reload signal in the first second (while modules load, before the event loop exists) used to end
    the process: SIGHUP's default action. It is ignored until the loop takes signals over."""
    process = start_daemon()
    pid = process.proc.pid
    deadline = time.monotonic() + 60
    while not loaded(pid, "multidict"):  # aiohttp is being imported: deep in start-up, no loop yet
        assert process.proc.poll() is None and time.monotonic() < deadline, process.stderr
        time.sleep(0.002)  # ok-sleep: polling /proc for a moment to signal at, not waiting for readiness
    for _ in range(3):
        process.proc.send_signal(signal.SIGHUP)
    url = process.wait_ready()
    assert url and identity(url) == "role-01"
    stopped_cleanly(process)


def test_sigterm_while_starting_exits_0_without_a_traceback(start_daemon) -> None:
    process = start_daemon()
    pid = process.proc.pid
    deadline = time.monotonic() + 60
    while not loaded(pid, "multidict"):
        assert process.proc.poll() is None and time.monotonic() < deadline, process.stderr
        time.sleep(0.002)  # ok-sleep: as above
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(timeout=STOP_DEADLINE) == 0
    assert process.wait() == 0 and "Traceback" not in process.stderr
