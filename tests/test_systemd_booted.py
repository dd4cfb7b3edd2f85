"""The service under a real systemd: a minimal Debian 12 booted with systemd-nspawn (only loopback in its
network namespace), the README's install commands run in it literally, and what an operator does next:
reload, a rejected reload, a refused AssumeRole in the journal, stop, the watchdog, a consumer service.

STS (moto behind the fault proxy) runs in this test process, with its sockets opened inside the container's
network namespace. moto keeps its accounts in module state, so this second moto server serves the same
two-account world as the session's, and role-02's session credentials are valid in both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import World
from tests.support import nspawn
from tests.support.faultproxy import FaultProxy
from tests.support.processes import BOTO3_PROBE, ROLE_01_SESSION

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
UNIT = "metadata-proxy"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="booting a container with systemd-nspawn needs root"),
    pytest.mark.skipif(not shutil.which("systemd-nspawn"), reason="systemd-nspawn is not installed "
                       "(Debian: systemd-container; .ci/run installs it)"),
]


def readme_install_commands() -> str:
    section = README[README.index("## Running it as a service"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def checkout(destination: Path) -> Path:
    """The repository as a fresh checkout would have it: tracked and new files, nothing ignored."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


@dataclass
class Machine:
    container: nspawn.Container
    proxy: FaultProxy  # in front of moto, inside the container's network namespace
    moto_url: str  # as seen from inside the container

    def sh(self, command: str) -> subprocess.CompletedProcess[str]:
        return self.container.run(command)

    def ok(self, command: str) -> str:
        result = self.sh(command)
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
        return result.stdout

    def now(self) -> str:
        """The container's time now, to read the journal from. (Not a cursor: with -u and -p, journalctl 252's
        --after-cursor missed the service's own lines here.)"""
        return "@" + self.ok("date +%s.%6N").strip()

    def journal(self, since: str, *options: str) -> list[str]:
        return self.ok(f"journalctl -u {UNIT} -o cat --since={since} {' '.join(options)}").splitlines()

    def wait_in_journal(self, since: str, text: str, *options: str) -> str:
        """The first line with text since then; it may arrive after systemctl has returned (the unit's
        output is a stream, read by journald apart from systemd's own messages)."""
        command = f"journalctl -f -u {UNIT} -o cat --since={since} {' '.join(options)}"
        return self.container.follow(f"timeout {nspawn.BOOT_TIMEOUT} {command}", lambda line: text in line)()

    def show(self, *properties: str) -> dict[str, str]:
        out = self.ok(f"systemctl show {UNIT} " + " ".join(f"-p {name}" for name in properties))
        return dict(line.split("=", 1) for line in out.splitlines())


@pytest.fixture(scope="module")
def machine(session_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    problem = nspawn.missing()
    if problem:
        pytest.fail(problem)
    work = tmp_path_factory.mktemp("nspawn")
    source = checkout(work / "checkout")
    container = nspawn.Container(nspawn.rootfs_path(), work / "boot.log",
                                 binds={source: "/root/metadata-proxy"},
                                 read_only={nspawn.wheelhouse_path(): nspawn.WHEELHOUSE_IN_CONTAINER})
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)

    def start_fake_aws() -> FaultProxy:
        moto.start()
        return FaultProxy(*moto.get_host_and_port()).start()

    try:
        assert container.run("ls /sys/class/net").stdout.split() == ["lo"]  # no way out but loopback
        proxy = container.in_network(start_fake_aws)
        host, port = moto.get_host_and_port()
        # The daemon's source identity (role-02's session, what EC2's instance profile would give it) and
        # its STS endpoint; it must never fall through to the instance metadata address.
        environment = {**session_world.source.environ(), "AWS_EC2_METADATA_DISABLED": "true",
                       "METADATA_PROXY_STS_ENDPOINT_URL": proxy.url}
        container.write("/etc/metadata-proxy/env", "".join(f"{k}={v}\n" for k, v in environment.items()), "0600")
        yield Machine(container, proxy, f"http://{host}:{port}")
        proxy.stop()
        moto.stop()
    finally:
        container.shut_down()


@pytest.fixture(scope="module")
def installed(machine: Machine) -> dict[str, str]:
    """The README's install commands, run literally in the checkout; AssumeRole is held at the fault proxy
    until the test has seen the unit still activating. Returns what was observed along the way."""
    gate = machine.proxy.hold("AssumeRole")
    install = machine.container.start(f"cd /root/metadata-proxy && set -e\n{readme_install_commands()}")
    try:
        assert machine.proxy.wait_for_calls("AssumeRole", 1, timeout=nspawn.COMMAND_TIMEOUT), install.stderr
        while_held = machine.sh(f"systemctl is-active {UNIT}").stdout.strip()
    finally:
        gate.set()
        out, err = install.communicate(timeout=nspawn.COMMAND_TIMEOUT)
    machine.proxy.reset()
    return {"while_held": while_held, "status": str(install.returncode), "output": out + err,
            "after": machine.sh(f"systemctl is-active {UNIT}").stdout.strip()}


@pytest.fixture
def service(machine: Machine, installed: dict[str, str]) -> Iterator[Machine]:
    """The installed service, active; each test leaves it so, with faults cleared."""
    assert installed["status"] == "0", installed["output"]
    yield machine
    machine.proxy.reset()
    if machine.sh(f"systemctl is-active {UNIT}").stdout.strip() != "active":
        machine.ok(f"systemctl reset-failed {UNIT}; systemctl start {UNIT}")


@pytest.mark.timeout(600)
def test_readme_install_is_active_only_after_the_first_credentials(installed: dict[str, str]) -> None:
    assert installed["status"] == "0", installed["output"]
    assert installed["while_held"] == "activating"
    assert installed["after"] == "active"


@pytest.mark.timeout(600)
def test_status_names_the_role_and_the_process_runs_as_a_dynamic_user(service: Machine) -> None:
    shown = service.show("StatusText", "MainPID")
    assert shown["StatusText"].startswith("serving role-01 on http://127.0.0.1:9254/")
    assert service.ok(f"stat -c %u /proc/{shown['MainPID']}").strip() != "0"


@pytest.mark.timeout(600)
def test_a_consumer_with_the_dropin_gets_role_01_through_an_http_proxy(service: Machine) -> None:
    """my-app has a dead HTTP proxy and its own lowercase no_proxy: the drop-in's no_proxy must replace it,
    or botocore sends the metadata request to the proxy. The probe is boto3's default chain, unmodified."""
    service.container.write("/usr/local/lib/probe.py", BOTO3_PROBE)
    service.container.write("/etc/systemd/system/my-app.service", f"""[Service]
Type=oneshot
Environment=HTTP_PROXY=http://127.0.0.1:9/ http_proxy=http://127.0.0.1:9/ no_proxy=corp.example
ExecStart=/opt/metadata-proxy/bin/python /usr/local/lib/probe.py {service.moto_url}
StandardOutput=truncate:/run/my-app.json
""")
    dropin = (ROOT / "systemd" / "examples" / "my-app.service.d-metadata-proxy.conf").read_text()
    service.container.write("/etc/systemd/system/my-app.service.d/metadata-proxy.conf", dropin)
    service.ok("systemctl daemon-reload && systemctl start my-app")
    seen = json.loads(service.ok("cat /run/my-app.json"))
    assert seen["method"] == "iam-role" and ROLE_01_SESSION.match(seen["arn"]), seen

    # The near miss: the same drop-in with NO_PROXY alone, as it once was.
    service.container.write("/etc/systemd/system/my-app.service.d/metadata-proxy.conf",
                            dropin.replace(" no_proxy=127.0.0.1,localhost", ""))
    assert service.sh("systemctl daemon-reload && systemctl start my-app").returncode != 0


@pytest.mark.timeout(600)
def test_sudo_keeps_the_endpoint_with_the_documented_snippet(service: Machine) -> None:
    endpoint = "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9254/"
    under_sudo = f"env {endpoint} no_proxy=127.0.0.1 sudo printenv AWS_EC2_METADATA_SERVICE_ENDPOINT no_proxy"
    assert service.sh(under_sudo).stdout == ""  # sudo's env_reset drops both
    service.ok("install -m 0440 /root/metadata-proxy/systemd/examples/sudoers-metadata-proxy "
               "/etc/sudoers.d/metadata-proxy && visudo -c")
    try:
        assert service.ok(under_sudo).split() == ["http://127.0.0.1:9254/", "127.0.0.1"]
    finally:
        service.ok("rm /etc/sudoers.d/metadata-proxy")


@pytest.mark.timeout(600)
def test_the_python_check_stops_the_install_without_the_venv_module(machine: Machine) -> None:
    """What Debian without python3-venv looks like: no ensurepip. The README's first command says so in
    one sentence, and the && chain never reaches pip."""
    first_line = readme_install_commands().splitlines()[0]
    hidden = "/usr/lib/python3.11/ensurepip"
    machine.ok(f"mv {hidden} /root/ensurepip.hidden")
    try:
        result = machine.sh(f"cd /root/metadata-proxy && {first_line.replace('/opt/metadata-proxy', '/opt/x')}")
    finally:
        machine.ok(f"mv /root/ensurepip.hidden {hidden}")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == ("metadata-proxy needs Python 3.11 or newer with its venv module, and its venv module "
                             "is not installed (Debian/Ubuntu: sudo apt install python3-venv; Amazon Linux "
                             "2023: sudo dnf install python3.11, then use python3.11 instead of python3).\n")
    assert machine.sh("test -e /opt/x").returncode == 1


@pytest.mark.timeout(600)
def test_reload_applies_a_new_port_in_the_same_process(service: Machine) -> None:
    before = service.show("MainPID")["MainPID"]
    config = "/etc/metadata-proxy/config.toml"
    service.ok(f"cp {config} /root/config.toml.saved && sed -i 's/^port = 9254/port = 9255/' {config}")
    try:
        service.ok(f"systemctl reload {UNIT}")
        service.ok("/opt/metadata-proxy/bin/metadata-proxy healthcheck --url http://127.0.0.1:9255/")
        assert service.show("MainPID")["MainPID"] == before
    finally:
        service.ok(f"cp /root/config.toml.saved {config} && systemctl reload {UNIT}")
    service.ok("/opt/metadata-proxy/bin/metadata-proxy healthcheck --url http://127.0.0.1:9254/")


def readme_retry_command() -> str:
    section = README[README.index("**Failures that a restart cannot fix.**"):]
    return re.search(r"```\n(sudo systemctl reset-failed.*?)\n```", section, re.S).group(1)


@pytest.mark.timeout(600)
def test_a_rejected_reload_fails_systemctl_reload_and_the_daemon_keeps_serving(service: Machine) -> None:
    before = service.show("MainPID")["MainPID"]
    config = "/etc/metadata-proxy/config.toml"
    since = service.now()
    service.ok(f"cp {config} /root/config.toml.saved && sed -i 's/^port = 9254/port = \"9255\"/' {config}")
    try:
        reload = service.sh(f"systemctl reload {UNIT}")
    finally:
        service.ok(f"cp /root/config.toml.saved {config}")
    assert reload.returncode != 0
    assert service.show("MainPID", "ActiveState") == {"MainPID": before, "ActiveState": "active"}
    service.ok("/opt/metadata-proxy/bin/metadata-proxy healthcheck --url http://127.0.0.1:9254/")
    assert service.wait_in_journal(since, "metadata-proxy: error:", "-p err") == (
        "metadata-proxy: error: /etc/metadata-proxy/config.toml: port: expected a whole number, got str '9255'")


@pytest.mark.timeout(600)
def test_a_refused_assume_role_is_an_error_in_the_journal_and_is_not_retried(service: Machine) -> None:
    restarts = service.show("NRestarts")["NRestarts"]
    since = service.now()
    service.proxy.outage("AssumeRole", "denied")
    assert service.sh(f"systemctl restart {UNIT}").returncode != 0
    # Right after the failure a restart would already be scheduled (auto-restart); the unit is failed instead.
    assert service.show("ActiveState", "SubState", "ExecMainStatus", "NRestarts") == {
        "ActiveState": "failed", "SubState": "failed", "ExecMainStatus": "4", "NRestarts": restarts}
    assert service.wait_in_journal(since, "metadata-proxy: error:", "-p err").startswith(
        "metadata-proxy: error: AssumeRole of arn:aws:iam::111111110001:role/role-01 failed: AccessDenied: ")
    assert not any("assuming arn:" in line for line in service.journal(since, "-p err"))  # info stays out
    assert any("assuming arn:" in line for line in service.journal(since))

    # After the fix (here: STS answers again), the documented command starts it.
    service.proxy.outage("AssumeRole", None)
    service.ok(readme_retry_command())
    assert service.show("ActiveState")["ActiveState"] == "active"


@pytest.mark.timeout(600)
def test_a_failure_that_may_pass_is_restarted(service: Machine) -> None:
    """The near miss of the test above: no source credentials yet (exit 1) is retried after RestartSec."""
    saved = service.ok("cat /etc/metadata-proxy/env")
    service.container.write("/etc/metadata-proxy/env", "AWS_EC2_METADATA_DISABLED=true\n", "0600")
    try:
        assert service.sh(f"systemctl restart {UNIT}").returncode != 0
        assert service.show("ActiveState", "SubState", "ExecMainStatus") == {
            "ActiveState": "activating", "SubState": "auto-restart", "ExecMainStatus": "1"}
    finally:
        service.container.write("/etc/metadata-proxy/env", saved, "0600")
    service.ok(f"systemctl start {UNIT}")  # waits for the scheduled restart, which now succeeds


@pytest.mark.timeout(600)
def test_stop_exits_0(service: Machine) -> None:
    service.ok(f"systemctl stop {UNIT}")
    shown = service.show("Result", "ExecMainStatus", "ActiveState")
    assert shown == {"Result": "success", "ExecMainStatus": "0", "ActiveState": "inactive"}
    service.ok(f"systemctl start {UNIT}")


@pytest.mark.timeout(600)
def test_the_watchdog_restarts_a_stopped_process(service: Machine) -> None:
    before = service.show("MainPID", "NRestarts")
    since = service.now()
    service.ok(f"kill -STOP {before['MainPID']}")
    service.wait_in_journal(since, "ready: serving")  # systemd's SIGABRT after WatchdogSec=30, then a restart
    after = service.show("MainPID", "NRestarts", "ActiveState")
    assert after["MainPID"] != before["MainPID"] and after["ActiveState"] == "active"
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    assert "Watchdog timeout" in service.ok(f"journalctl -o cat -u {UNIT}")
