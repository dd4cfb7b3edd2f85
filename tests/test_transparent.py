"""Transparent mode: chosen local users reach the daemon at 169.254.169.254 with no variable set.

Every packet to an IMDS address in this file stays inside a network namespace the module creates itself
(tests/support/netns.py): `ip netns add` under a unique name, checked to have no interface but `lo` and no
default route before anything starts in it, then 169.254.169.254/32 and fd00:ec2::254/128 on its `lo`. In
it run moto with the scenario's world and a stub of the real IMDS whose instance profile is role-02
(tests/support/fake_instance.py, which checks the isolation again from inside), the daemon (as root, with
no source credentials: it must find role-02 at the stub) and the clients, as `nobody` with no AWS variable.
The tests above the namespace's fixtures send no packet at all.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from metadata_proxy import scenario
from metadata_proxy.demo import listing_rows
from metadata_proxy.errors import ConfigError
from metadata_proxy.gate import HostCheck
from metadata_proxy.intercept import ruleset
from metadata_proxy.passthrough import forwardable
from tests.support.fake_instance import INSTANCE_ID, USER_DATA
from tests.support.netns import Namespace, private_home, shared_python
from tests.support.notify import NotifySocket
from tests.support.processes import BOTO3_PROBE, JS_DIR, ROLE_01_SESSION, DaemonProcess, base_env
from tests.support.worlds import ROLE_04_ARN
from tests.test_config import ARN, config

REPO = Path(__file__).resolve().parent.parent
AWS_CLI_V2 = Path("/usr/bin/aws")
ROLE_02_SESSION = f"arn:aws:sts::{scenario.ACCOUNT_B}:assumed-role/role-02/i-0123456789abcdef0"
ROLE_04_SESSION_PREFIX = f"arn:aws:sts::{scenario.ACCOUNT_A}:assumed-role/role-04/"
TABLE = "table inet metadata_proxy"
CREDS = "/latest/meta-data/iam/security-credentials/"


# --- no packets: the rules, the Host check, what may pass through, the configuration ---

def test_the_rules_redirect_only_the_listed_users_and_exempt_the_daemon() -> None:
    script = ruleset([65534, 1000], [100], 9280, exempt_uid=0)
    assert script.startswith("add table inet metadata_proxy\ndelete table inet metadata_proxy\n")
    lines = [line.strip() for line in script.splitlines()]
    assert lines[lines.index("meta skuid 0 return") - 1].startswith("type nat hook output priority -100;")
    assert "ip daddr 169.254.169.254 tcp dport 80 meta skuid { 1000, 65534 } dnat ip to 127.0.0.1:9280" in lines
    assert "ip6 daddr fd00:ec2::254 tcp dport 80 meta skuid { 1000, 65534 } dnat ip6 to [::1]:9280" in lines
    assert "ip daddr 169.254.169.254 tcp dport 80 meta skgid { 100 } dnat ip to 127.0.0.1:9280" in lines
    assert sum("dnat" in line for line in lines) == 4


@pytest.mark.parametrize("host", ["169.254.169.254", "169.254.169.254:80", "[fd00:ec2::254]",
                                  "[fd00:ec2::254]:80", "127.0.0.1:9280", "localhost"])
def test_the_transparent_endpoint_answers_for_the_imds_addresses(host: str) -> None:
    assert HostCheck("127.0.0.1", also=("169.254.169.254", "fd00:ec2::254")).allows(host)


@pytest.mark.parametrize("host", ["169.254.169.254.attacker.example", "169.254.169.25", "169.254.169.2540",
                                  "169.254.169.255", "x169.254.169.254", "[fd00:ec2::255]", "fd00:ec2::254.evil",
                                  "[::ffff:169.254.169.254]", "instance-data.ec2.internal", "0xa9fea9fe"])
def test_near_misses_of_the_imds_addresses_are_refused(host: str) -> None:
    assert not HostCheck("127.0.0.1", also=("169.254.169.254", "fd00:ec2::254")).allows(host)


def test_a_roles_own_listener_does_not_answer_for_the_imds_address() -> None:
    assert not HostCheck("127.0.0.1").allows("169.254.169.254")


@pytest.mark.parametrize(("path", "passes"), [
    ("/latest/meta-data/instance-id", True), ("/latest/user-data", True), ("/latest/meta-data", True),
    ("/latest/dynamic/instance-identity/document", True), ("/", True),
    ("/latest/meta-data/iam/info", False), ("/latest/meta-data/iam/security-credentials/role-02", False),
    ("/latest/meta-data/iam/security-credentials-extended/role-02", False), ("/latest/meta-data/IAM/info", False),
    ("/2016-09-02/meta-data/iam/security-credentials/role-02", False),
    ("/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance", False),
    ("/latest/meta-data/%69am/info", False), ("/latest/meta-data/./iam/info", False),
    ("/latest/meta-data/placement/../iam/info", False), ("/latest/meta-data/iam.", False),
])
def test_only_plain_non_credential_paths_pass_through(path: str, passes: bool) -> None:
    assert forwardable(path) is passes


@pytest.mark.parametrize(("argv", "message"), [
    (["--user", "nobody"], "set intercept_users or intercept_groups too"),
    (["--intercept-user", "no-such-user-here"], "--intercept-user: no such user"),
    (["--intercept-group", "no-such-group-here"], "--intercept-group: no such group"),
    (["--intercept-user", "nobody", "--intercept-port", "0"], "--intercept-port"),
    (["--intercept-user", "nobody", "--port", "9280"], "the transparent endpoint"),
])
def test_interception_mistakes_are_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(["--role-arn", ARN, *argv])


def test_each_user_gets_one_role(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    def write(mapping: str) -> str:
        roles = "".join(f'[[role]]\nrole_arn = "{ARN[:-2]}0{n}"\nport = 0\n{mapping}\n' for n in (1, 4))
        file.write_text(f'intercept_users = ["nobody"]\n{roles}')
        return str(file)

    with pytest.raises(ConfigError, match="user 65534 is listed in the users of both 'role-01' and 'role-04'"):
        config(["--config", write('users = ["nobody"]')])
    with pytest.raises(ConfigError, match="at most one"):
        config(["--config", write("")])


# --- inside the test's own network namespace ---

NAMESPACE_TOOLS = ("ip", "nsenter", "setpriv", "nft")


@dataclass
class Instance:
    """The fake EC2 instance inside the namespace: moto's address and what the stub IMDS answered."""

    moto_url: str
    namespace: Namespace
    records: queue.Queue[dict[str, object]]
    seen: list[dict[str, object]]

    def stub_requests(self) -> list[dict[str, object]]:
        """Every request the stub has answered so far (the stub reports each before the answer is read)."""
        while True:
            try:
                self.seen.append(self.records.get_nowait())
            except queue.Empty:
                return list(self.seen)


@pytest.fixture(scope="module")
def namespace() -> Iterator[Namespace]:
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in NAMESPACE_TOOLS):
        reason = "a network namespace of the test's own needs root and ip, nsenter, setpriv, nft (nftables)"
        if os.environ.get("CI"):  # CI runs as root and installs them: there it must not pass by skipping
            pytest.fail(reason)
        pytest.skip(reason)
    with Namespace() as created:  # checked isolated before the first packet; then the IMDS addresses
        yield created


@pytest.fixture(scope="module")
def instance(namespace: Namespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    home = tmp_path_factory.mktemp("fake-instance")
    process = subprocess.Popen(namespace.command([sys.executable, "-m", "tests.support.fake_instance"]),
                               env=base_env(home), cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdin is not None
    first = json.loads(process.stdout.readline() or '{"error": "no answer"}')
    assert "moto_url" in first, f"{first}: {process.stderr.read() if process.poll() is not None else ''}"
    records: queue.Queue[dict[str, object]] = queue.Queue()

    def pump() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            records.put(json.loads(line))

    threading.Thread(target=pump, daemon=True).start()
    yield Instance(first["moto_url"], namespace, records, [])
    process.stdin.close()
    process.wait(timeout=60)


@pytest.fixture(scope="module")
def homes() -> Iterator[Path]:
    """Homes for the client users, under a directory they can traverse (pytest's own is root's, 0700)."""
    parent = Path(tempfile.mkdtemp(prefix="metadata-proxy-transparent-"))
    os.chmod(parent, 0o755)
    yield parent
    shutil.rmtree(parent)


def serve(instance: Instance, home: Path, *args: str) -> DaemonProcess:
    """The daemon as root in the namespace, with no source credentials: its chain ends at the stub IMDS."""
    process = DaemonProcess(["serve", "--region", scenario.REGION, "--sts-endpoint-url", instance.moto_url, *args],
                            base_env(home), wrapper=tuple(instance.namespace.command([])))
    assert process.wait_ready(), process.stderr
    return process


def serve_role_01(instance: Instance, home: Path) -> DaemonProcess:
    return serve(instance, home, "--role-arn", scenario.ROLE_01_ARN, "--port", "0", "--intercept-user", "nobody")


def client_env(home: Path, *, python: bool = False) -> dict[str, str]:
    """No AWS variable at all; PYTHONPATH only for the interpreter that runs this venv's packages."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    return env | shared_python()[1] if python else env


RAW = """
import http.client, json, sys
address, port, host = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def call(method, path, headers):
    conn = http.client.HTTPConnection(address, port, timeout=30)
    conn.request(method, path, headers={"Host": host, **headers})
    reply = conn.getresponse()
    answer = [reply.status, reply.read().decode()]
    conn.close()
    return answer
try:
    status, token = call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    print(json.dumps({path: call("GET", path, {"X-aws-ec2-metadata-token": token}) for path in sys.argv[4:]}))
except ConnectionRefusedError:
    print(json.dumps("refused"))
except (http.client.RemoteDisconnected, ConnectionResetError):
    print(json.dumps("closed"))
"""


def fetch(instance: Instance, homes: Path, user: str, *paths: str, address: str = "169.254.169.254",
          port: int = 80, host: str | None = None) -> dict[str, list] | str:
    """IMDSv2 GETs as `user` inside the namespace: {path: [status, body]}, or "refused"."""
    home = private_home(user, homes)
    host = host or (f"[{address}]" if ":" in address else address)
    result = instance.namespace.run([shared_python()[0], "-c", RAW, address, str(port), host, *paths],
                                    client_env(home, python=True), user=user)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def as_user(instance: Instance, homes: Path, user: str, args: list[str], *, python: bool = False,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    home = private_home(user, homes)
    return instance.namespace.run(args, client_env(home, python=python), user=user, cwd=cwd)


BOTO3_LISTING = """
import json, sys, boto3
s3 = boto3.Session(region_name="us-east-1").client("s3", endpoint_url=sys.argv[1])
print(json.dumps(sorted(item["Key"] for item in s3.list_objects_v2(Bucket=sys.argv[2])["Contents"])))
"""


def boto3_identity(instance: Instance, homes: Path, user: str) -> dict[str, str]:
    result = as_user(instance, homes, user, [shared_python()[0], "-c", BOTO3_PROBE, instance.moto_url], python=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="class")
def one_role(instance: Instance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    process = serve_role_01(instance, tmp_path_factory.mktemp("one-role"))
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="class")
def two_roles(instance: Instance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    home = tmp_path_factory.mktemp("two-roles")
    file = home / "config.toml"
    file.write_text(two_roles_config("nobody", "daemon"))
    process = serve(instance, home, "--config", str(file))
    yield process
    assert process.stop() == 0


def two_roles_config(role_01_user: str, role_04_group: str) -> str:
    """nobody is intercepted by uid, the daemon account by its (primary) group."""
    return f"""
intercept_users = ["nobody"]
intercept_groups = ["daemon"]

[[role]]
role_arn = "{scenario.ROLE_01_ARN}"
port = 0
users = ["{role_01_user}"]

[[role]]
role_arn = "{ROLE_04_ARN}"
port = 0
groups = ["{role_04_group}"]
"""


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("one_role")
class TestOneRoleForNobody:
    """`--intercept-user nobody` and one role: the one config line of the README."""

    def test_the_daemon_found_role_02_at_the_stub(self, instance: Instance) -> None:
        fetched = [(r["path"], r["status"]) for r in instance.stub_requests() if "path" in r]
        assert ("/latest/meta-data/iam/security-credentials/role-02", 200) in fetched

    def test_aws_cli_v1_as_nobody_lists_foobar_as_role_01(self, instance: Instance,
                                                          homes: Path) -> None:
        cli = [shared_python()[0], "-m", "awscli"]
        where = ["--endpoint-url", instance.moto_url, "--region", scenario.REGION]
        identity = as_user(instance, homes, "nobody", [*cli, "sts", "get-caller-identity", *where], python=True)
        assert identity.returncode == 0, identity.stderr
        assert ROLE_01_SESSION.match(json.loads(identity.stdout)["Arn"])
        listing = as_user(instance, homes, "nobody", [*cli, "s3", "ls", "s3://foobar/", *where], python=True)
        assert listing.returncode == 0, listing.stderr
        assert listing_rows(listing.stdout) == scenario.EXPECTED_LISTING

    def test_aws_cli_v2_as_nobody_lists_foobar_as_role_01(self, instance: Instance,
                                                          homes: Path) -> None:
        if not AWS_CLI_V2.is_file():
            pytest.skip("the AWS CLI v2 is not installed (apt-get install awscli)")
        where = ["--endpoint-url", instance.moto_url, "--region", scenario.REGION]
        listing = as_user(instance, homes, "nobody", [str(AWS_CLI_V2), "s3", "ls", "s3://foobar/", *where])
        assert listing.returncode == 0, listing.stderr
        assert listing_rows(listing.stdout) == scenario.EXPECTED_LISTING

    def test_boto3_as_nobody_gets_role_01_from_the_instance_role_provider(
            self, instance: Instance, homes: Path) -> None:
        probe = boto3_identity(instance, homes, "nobody")
        assert probe["method"] == "iam-role" and ROLE_01_SESSION.match(probe["arn"])
        listing = as_user(instance, homes, "nobody", [shared_python()[0], "-c", BOTO3_LISTING, instance.moto_url,
                                                      scenario.BUCKET], python=True)
        assert listing.returncode == 0, listing.stderr
        assert json.loads(listing.stdout) == sorted(scenario.OBJECTS)

    def test_js_sdk_as_nobody_lists_foobar_as_role_01(self, instance: Instance,
                                                      homes: Path) -> None:
        if not shutil.which("node") or not (JS_DIR / "node_modules").is_dir():
            if os.environ.get("CI"):
                pytest.fail("CI must install the JS client: npm ci --prefix tests/js")
            pytest.skip("run `npm ci --prefix tests/js` to include the JavaScript SDK")
        result = as_user(instance, homes, "nobody", [shutil.which("node") or "node", str(JS_DIR / "whoami.mjs"),
                                                     instance.moto_url, scenario.BUCKET], cwd=JS_DIR)
        assert result.returncode == 0, result.stderr
        probe = json.loads(result.stdout.strip().splitlines()[-1])
        assert ROLE_01_SESSION.match(probe["arn"]) and sorted(probe["keys"]) == sorted(scenario.OBJECTS)

    def test_root_and_other_users_still_get_role_02_from_the_stub(self, instance: Instance,
                                                                  homes: Path) -> None:
        assert boto3_identity(instance, homes, "root")["arn"] == ROLE_02_SESSION
        assert fetch(instance, homes, "daemon", CREDS) == {CREDS: [200, "role-02"]}

    def test_instance_metadata_passes_through_and_credentials_never_do(self,
                                                                       instance: Instance, homes: Path) -> None:
        secret_paths = ["/latest/meta-data/iam/security-credentials/role-02",
                        "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance"]
        before = len(instance.stub_requests())
        answers = fetch(instance, homes, "nobody", "/latest/meta-data/instance-id", "/latest/user-data",
                        "/latest/meta-data/placement/availability-zone", CREDS, *secret_paths)
        assert answers == {
            "/latest/meta-data/instance-id": [200, INSTANCE_ID],
            "/latest/user-data": [200, USER_DATA.decode()],
            "/latest/meta-data/placement/availability-zone": [200, "us-east-1b"],
            CREDS: [200, "role-01"],
            secret_paths[0]: [404, "Not Found"],
            secret_paths[1]: [404, "Not Found"],
        }
        forwarded = [r["path"] for r in instance.stub_requests()[before:] if r.get("method") == "GET"]
        assert "/latest/meta-data/instance-id" in forwarded and "/latest/user-data" in forwarded
        assert not [path for path in forwarded if "credentials" in str(path)]

    def test_iam_info_names_the_served_role(self, instance: Instance, homes: Path) -> None:
        status, body = fetch(instance, homes, "nobody", "/latest/meta-data/iam/info")["/latest/meta-data/iam/info"]
        assert status == 200
        assert json.loads(body)["InstanceProfileArn"] == f"arn:aws:iam::{scenario.ACCOUNT_A}:instance-profile/role-01"

    def test_over_ipv6_too(self, instance: Instance, homes: Path) -> None:
        answers = fetch(instance, homes, "nobody", CREDS, "/latest/meta-data/instance-id", address="fd00:ec2::254")
        assert answers == {CREDS: [200, "role-01"], "/latest/meta-data/instance-id": [200, INSTANCE_ID]}

    @pytest.mark.parametrize("host", ["169.254.169.254.attacker.example", "169.254.169.25"])
    def test_a_rebinding_host_is_refused_on_the_wire(self, instance: Instance, homes: Path,
                                                     host: str) -> None:
        assert fetch(instance, homes, "nobody", CREDS, host=host) == {CREDS: [403, "Forbidden: Host not allowed"]}

    def test_no_secret_of_the_stub_reaches_the_log(self, one_role: DaemonProcess, instance: Instance,
                                                   homes: Path) -> None:
        fetch(instance, homes, "nobody", "/latest/meta-data/instance-id")
        issued = {token for r in instance.stub_requests() for token in r.get("tokens", [])}
        assert issued and not [token for token in issued if token in one_role.stderr]


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("two_roles")
class TestTwoRolesForTwoUsers:
    """role-01 for the user nobody, role-04 for the group daemon (the daemon account's primary group)."""

    def test_each_user_sees_only_its_own_role(self, instance: Instance, homes: Path) -> None:
        for user, role in (("nobody", "role-01"), ("daemon", "role-04")):
            other = {"role-01": "role-04", "role-04": "role-01"}[role]
            assert fetch(instance, homes, user, CREDS, CREDS + other) == {CREDS: [200, role],
                                                                          CREDS + other: [404, "Not Found"]}
        assert ROLE_01_SESSION.match(boto3_identity(instance, homes, "nobody")["arn"])
        assert boto3_identity(instance, homes, "daemon")["arn"].startswith(ROLE_04_SESSION_PREFIX)

    def test_a_mapped_roles_own_listener_serves_only_its_users(self, instance: Instance, homes: Path,
                                                               two_roles: DaemonProcess) -> None:
        """The role's loopback port is no way around the mapping: daemon (role-04's group) is closed out of
        role-01's port, and nobody out of role-04's, at accept."""
        ports = [int(two_roles.export("AWS_EC2_METADATA_SERVICE_ENDPOINT", index).rstrip("/").rsplit(":", 1)[1])
                 for index in (0, 1)]
        assert fetch(instance, homes, "nobody", CREDS, address="127.0.0.1", port=ports[0]) == {CREDS: [200, "role-01"]}
        assert fetch(instance, homes, "daemon", CREDS, address="127.0.0.1", port=ports[0]) == "closed"
        assert fetch(instance, homes, "daemon", CREDS, address="127.0.0.1", port=ports[1]) == {CREDS: [200, "role-04"]}
        assert fetch(instance, homes, "nobody", CREDS, address="127.0.0.1", port=ports[1]) == "closed"

    def test_an_unmapped_user_gets_no_role_when_every_role_is_mapped(self,
                                                                     instance: Instance, homes: Path) -> None:
        """bin is not intercepted; on the transparent endpoint itself it is an unmapped uid: IMDS without a
        profile answers 404 there."""
        answers = fetch(instance, homes, "bin", CREDS, "/latest/meta-data/instance-id", address="127.0.0.1",
                        port=9280)
        assert answers == {CREDS: [404, "Not Found"], "/latest/meta-data/instance-id": [200, INSTANCE_ID]}


@pytest.mark.timeout(600)
def test_sigterm_removes_the_rules(instance: Instance, homes: Path, tmp_path: Path) -> None:
    daemon = serve_role_01(instance, tmp_path)
    assert instance.namespace.tables() == [TABLE]
    assert fetch(instance, homes, "nobody", CREDS + "role-01")[CREDS + "role-01"][0] == 200
    assert daemon.stop(signal.SIGTERM) == 0
    assert instance.namespace.tables() == []
    # the audit trail names the user and the role it was served at 169.254.169.254
    assert f"audit: uid 65534 (nobody) imds-credentials role {scenario.ROLE_01_ARN}, 1 time" in daemon.stderr
    assert fetch(instance, homes, "nobody", CREDS) == {CREDS: [200, "role-02"]}  # undone: the real IMDS again


@pytest.mark.timeout(600)
def test_after_sigkill_clients_are_refused_until_a_restart_or_the_cleanup(instance: Instance, homes: Path,
                                                                         tmp_path: Path) -> None:
    daemon = serve_role_01(instance, tmp_path)
    daemon.stop(signal.SIGKILL)
    before = len(instance.stub_requests())
    assert fetch(instance, homes, "nobody", CREDS) == "refused"
    assert fetch(instance, homes, "nobody", CREDS, address="fd00:ec2::254") == "refused"
    assert len(instance.stub_requests()) == before  # nothing fell through to the real IMDS

    again = serve_role_01(instance, tmp_path)
    ruleset_now = instance.namespace.run(["nft", "list", "ruleset"], {"PATH": "/usr/sbin:/usr/bin"}).stdout
    assert instance.namespace.tables() == [TABLE] and ruleset_now.count("dnat") == 2
    assert ruleset_now.count("meta skuid 0 return") == 1  # the daemon (root here) exempts its own requests
    assert fetch(instance, homes, "nobody", CREDS) == {CREDS: [200, "role-01"]}
    again.stop(signal.SIGKILL)
    assert instance.namespace.tables() == [TABLE]

    cleanup = instance.namespace.run([sys.executable, "-m", "metadata_proxy", "intercept", "remove"],
                                     base_env(tmp_path), cwd=REPO)
    assert cleanup.returncode == 0, cleanup.stderr
    assert instance.namespace.tables() == []
    assert fetch(instance, homes, "nobody", CREDS) == {CREDS: [200, "role-02"]}


@pytest.mark.timeout(300)
def test_the_daemon_refuses_to_intercept_its_own_user(instance: Instance, tmp_path: Path) -> None:
    process = DaemonProcess(["serve", "--role-arn", scenario.ROLE_01_ARN, "--port", "0", "--intercept-user", "root",
                             "--sts-endpoint-url", instance.moto_url], base_env(tmp_path),
                            wrapper=tuple(instance.namespace.command([])))
    assert process.wait() == 2
    assert "Traceback" not in process.stderr
    assert process.stderr.splitlines()[-1] == (
        "metadata-proxy: error: metadata-proxy runs as uid 0 gid 0, which the interception rules would redirect: "
        "it needs the real IMDS for its own identity; run it as another user")
    assert instance.namespace.tables() == []


@pytest.mark.timeout(600)
def test_a_reload_remaps_users_to_roles(instance: Instance, homes: Path, tmp_path: Path) -> None:
    """First nobody is both role-01's user and a member of role-04's group (nogroup, its primary group): the
    user mapping wins, and the daemon account, intercepted but mapped nowhere, gets no role. Then a reload
    gives role-01 to the daemon account: nobody is left with its group's role-04."""
    file = tmp_path / "config.toml"
    file.write_text(two_roles_config("nobody", "nogroup"))
    notify = NotifySocket(tmp_path)
    daemon = DaemonProcess(["serve", "--region", scenario.REGION, "--sts-endpoint-url", instance.moto_url,
                            "--config", str(file)], base_env(tmp_path) | {"NOTIFY_SOCKET": notify.path},
                           wrapper=tuple(instance.namespace.command([])))
    try:
        assert daemon.wait_ready(), daemon.stderr
        assert fetch(instance, homes, "nobody", CREDS) == {CREDS: [200, "role-01"]}
        assert fetch(instance, homes, "daemon", CREDS) == {CREDS: [404, "Not Found"]}
        file.write_text(two_roles_config("daemon", "nogroup"))
        daemon.proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1")
        assert "last reload rejected" not in notify.wait_for("READY", "1")["STATUS"]
        assert fetch(instance, homes, "nobody", CREDS) == {CREDS: [200, "role-04"]}
        assert fetch(instance, homes, "daemon", CREDS) == {CREDS: [200, "role-01"]}
    finally:
        assert daemon.stop() == 0
        notify.close()


@pytest.mark.timeout(600)
def test_an_unprivileged_daemon_serves_behind_rules_written_by_intercept_install(instance: Instance, homes: Path,
                                                                                  tmp_path: Path) -> None:
    """As the systemd drop-in does it: `intercept install` as root, then the daemon as a user without
    CAP_NET_ADMIN (bin), whose own requests reach the stub; its stop leaves the rules to `intercept remove`."""
    file = homes / "unprivileged.toml"
    file.write_text(f'role_arn = "{scenario.ROLE_01_ARN}"\nport = 0\nintercept_users = ["nobody"]\n'
                    f'region = "{scenario.REGION}"\nsts_endpoint_url = "{instance.moto_url}"\n')
    os.chmod(file, 0o644)
    intercept = [sys.executable, "-m", "metadata_proxy", "intercept"]
    installed = instance.namespace.run([*intercept, "install", "--config", str(file)], base_env(tmp_path), cwd=REPO)
    assert installed.returncode == 0, installed.stderr
    python, env = shared_python()
    home = private_home("bin", homes)
    daemon = DaemonProcess(["serve", "--config", str(file)],
                           {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": f"{env['PYTHONPATH']}:{REPO}"},
                           wrapper=tuple(instance.namespace.command([], user="bin")), python=python)
    try:
        assert daemon.wait_ready(), daemon.stderr
        assert "not writing the interception rules (no CAP_NET_ADMIN)" in daemon.stderr
        assert ROLE_01_SESSION.match(boto3_identity(instance, homes, "nobody")["arn"])
    finally:
        assert daemon.stop() == 0
    assert instance.namespace.tables() == [TABLE]
    assert fetch(instance, homes, "nobody", CREDS) == "refused"
    removed = instance.namespace.run([*intercept, "remove"], base_env(tmp_path), cwd=REPO)
    assert removed.returncode == 0, removed.stderr
    assert instance.namespace.tables() == []


DROPIN = REPO / "systemd" / "examples" / "metadata-proxy.service.d-transparent.conf"


def dropin_commands() -> dict[str, str]:
    return dict(line.split("=", 1) for line in DROPIN.read_text().splitlines() if line.startswith("Exec"))


def test_the_systemd_drop_in_verifies_with_the_unit() -> None:
    """Installed as the drop-in's comment says, next to the shipped unit, in a private mount namespace."""
    if not shutil.which("systemd-analyze") or os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs systemd-analyze, and root for a private mount namespace")
    unit = REPO / "systemd" / "metadata-proxy.service"
    script = ("mount -t tmpfs tmpfs /opt && mkdir -p /opt/metadata-proxy/bin && "
              f"ln -s {Path(sys.executable).parent / 'metadata-proxy'} /opt/metadata-proxy/bin/metadata-proxy && "
              "mount -t tmpfs tmpfs /etc/systemd/system && mkdir /etc/systemd/system/metadata-proxy.service.d && "
              f"cp {unit} /etc/systemd/system/ && cp {DROPIN} /etc/systemd/system/metadata-proxy.service.d/t.conf && "
              "exec systemd-analyze verify /etc/systemd/system/metadata-proxy.service")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout == result.stderr == "", result.stderr
    assert dropin_commands()["ExecStartPre"] == ("+/opt/metadata-proxy/bin/metadata-proxy intercept install "
                                                 "--config /etc/metadata-proxy/config.toml")


@pytest.mark.parametrize(("result", "removed"), [("success", True), ("exit-code", False), ("signal", False),
                                                 ("watchdog", False)])
def test_the_drop_in_removes_the_rules_after_a_clean_stop_only(tmp_path: Path, result: str, removed: bool) -> None:
    """systemd tells ExecStopPost= how the service ended in SERVICE_RESULT; a crash keeps the rules."""
    command = dropin_commands()["ExecStopPost"]
    assert command.startswith("+/bin/sh -c ")
    log = tmp_path / "called"
    fake = tmp_path / "metadata-proxy"
    fake.write_text(f'#!/bin/sh\necho "$@" > {log}\n')
    fake.chmod(0o755)
    shell = command.removeprefix("+/bin/sh -c ").strip("'").replace("/opt/metadata-proxy/bin/metadata-proxy",
                                                                     str(fake))
    run = subprocess.run(["/bin/sh", "-c", shell], env={"SERVICE_RESULT": result}, timeout=60)
    assert run.returncode == 0
    assert (log.read_text() if log.exists() else None) == ("intercept remove\n" if removed else None)


@pytest.mark.timeout(300)
def test_intercept_command_mistakes_are_one_line(instance: Instance, homes: Path, tmp_path: Path) -> None:
    """Run in the namespace all the same: neither may write a rule."""
    unprivileged = instance.namespace.run(
        [shared_python()[0], "-m", "metadata_proxy", "intercept", "remove"],
        {"PATH": "/usr/sbin:/usr/bin", "PYTHONPATH": f"{shared_python()[1]['PYTHONPATH']}:{REPO}"}, user="nobody")
    assert (unprivileged.returncode, unprivileged.stderr) == (
        1, "metadata-proxy: error: writing firewall rules needs CAP_NET_ADMIN: run this as root\n")
    nothing = instance.namespace.run([sys.executable, "-m", "metadata_proxy", "intercept", "install", "--role-arn",
                                      scenario.ROLE_01_ARN], base_env(tmp_path), cwd=REPO)
    assert nothing.returncode == 2 and nothing.stderr.startswith("metadata-proxy: error: nothing to intercept")
    assert instance.namespace.tables() == []
