"""Who may read the credentials (local-user allow-list), hop limit, resource limits, secrets hygiene."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from metadata_proxy import scenario
from metadata_proxy.listeners import TrackedServer
from metadata_proxy.peercred import parse_answer, parse_user, peer_uid
from tests.conftest import World, launch
from tests.support.http import get, request, token
from tests.support.processes import BIN, ROLE_01_SESSION, aws, client_env

CREDS = "/latest/meta-data/iam/security-credentials/"
NOBODY = pwd.getpwnam("nobody")
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="switching to another user needs root and setpriv")


# --- peer uid from the kernel's socket table ---

@pytest.mark.parametrize(("family", "address"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_peer_uid_of_a_loopback_connection(family: int, address: str) -> None:
    try:
        server = socket.socket(family)
        server.bind((address, 0))
    except OSError:
        pytest.skip(f"no {address} here")
    with server:
        server.listen()
        with socket.create_connection(server.getsockname()[:2]) as client:
            accepted, peer = server.accept()
            with accepted:
                assert peer_uid(peer[:2], accepted.getsockname()[:2]) == os.geteuid()
                assert client.getsockname()[:2] == peer[:2]
        # once the connection is gone, nothing matches: unknown, and the caller denies
        assert peer_uid(peer[:2], server.getsockname()[:2]) is None


def test_a_closed_connections_remnant_is_not_its_owner() -> None:
    """Once the client has closed, its socket lingers in TIME_WAIT, which the kernel reports as uid 0: that
    must read as unknown, not as root."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        accepted, peer = server.accept()
        local = accepted.getsockname()
        assert peer_uid(peer, local) == os.geteuid()
        client.close()  # the client closes first, so its end is the one left in TIME_WAIT
        accepted.close()
        assert peer_uid(peer, local) is None


def test_only_an_answer_about_exactly_that_socket_counts() -> None:
    """The kernel's answer is read only if it describes a connected socket with the 4-tuple asked about."""
    socket_id = struct.pack(">HH", 50000, 9254) + bytes([127, 0, 0, 1]).ljust(16, b"\0") * 2

    def answer(state: int, echoed: bytes = socket_id, kind: int = 20, uid: int = 1234) -> bytes:
        body = struct.pack("=BBBB", socket.AF_INET, state, 0, 0) + echoed + struct.pack("=III", 0, 0, 0) + \
            struct.pack("=IIIII", 0, 0, 0, uid, 99)
        return struct.pack("=IHHII", 16 + len(body), kind, 0, 7, 0) + body

    assert parse_answer(answer(1), socket_id) == 1234  # ESTABLISHED
    assert parse_answer(answer(5), socket_id) == 1234  # FIN_WAIT2: the client half-closed, still its socket
    assert parse_answer(answer(6, uid=0), socket_id) is None  # TIME_WAIT
    assert parse_answer(answer(10), socket_id) is None  # LISTEN: some listener on the client's port, not the client
    other_port = struct.pack(">HH", 50001, 9254) + socket_id[4:]
    assert parse_answer(answer(1, echoed=other_port), socket_id) is None
    assert parse_answer(answer(1, kind=2), socket_id) is None  # NLMSG_ERROR (no such socket)
    assert parse_answer(answer(1)[:-4], socket_id) is None  # truncated


def test_user_names_resolve_and_unknown_ones_are_refused() -> None:
    assert parse_user("nobody") == NOBODY.pw_uid and parse_user("0") == 0
    with pytest.raises(ValueError, match="no such user"):
        parse_user("no-such-user-here")


def as_nobody(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
                           "--", *args], env=env, capture_output=True, text=True, timeout=120)


def world_readable_home(tmp_path: Path) -> Path:
    home = tmp_path / "public-home"
    home.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(home, 0o755)
    return home


FETCH = """
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
try:
    conn.request("PUT", "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    reply = conn.getresponse()
except (ConnectionError, http.client.HTTPException):
    print("closed without an answer")
else:
    print(reply.status, reply.read().decode())
"""


@needs_root
def test_only_allowed_users_get_tokens_or_credentials(world: World, tmp_path: Path) -> None:
    """Clients as an allowed uid succeed; as `nobody` their connections are closed without an answer, and the
    log names the uid."""
    process = launch(world, tmp_path, "--allow-uid", str(os.geteuid()), "--container-credentials",
                     "--container-token-file", str(tmp_path / "token"))
    url = process.wait_ready()
    assert url, process.stderr
    port = url.rstrip("/").rsplit(":", 1)[1]
    home = world_readable_home(tmp_path)
    try:
        allowed = aws("sts", "get-caller-identity", "--endpoint-url", world.moto_url, "--region", scenario.REGION,
                      env=client_env(home, AWS_EC2_METADATA_SERVICE_ENDPOINT=url))
        assert allowed.returncode == 0, allowed.stderr
        assert ROLE_01_SESSION.match(json.loads(allowed.stdout)["Arn"])

        refused = as_nobody([sys.executable, "-c", FETCH, port], client_env(home))
        assert refused.stdout == "closed without an answer\n"
        cli = as_nobody([str(BIN / "aws"), "sts", "get-caller-identity", "--endpoint-url", world.moto_url,
                         "--region", scenario.REGION], client_env(home, AWS_EC2_METADATA_SERVICE_ENDPOINT=url))
        assert cli.returncode != 0 and "Unable to locate credentials" in cli.stderr
        token_value = (tmp_path / "token").read_text()
        stolen = as_nobody([sys.executable, "-c", FETCH.replace('"PUT", "/latest/api/token"',
                                                                 '"GET", "/v1/credentials/role-01"').replace(
            '"X-aws-ec2-metadata-token-ttl-seconds": "60"', f'"Authorization": "{token_value}"'), port],
            client_env(home))
        assert stolen.stdout == "closed without an answer\n"
    finally:
        assert process.stop() == 0
    assert f"refused connections from uid {NOBODY.pw_uid} (nobody): not an allowed local user" in process.stderr


@needs_root
def test_allow_user_by_name(world: World, tmp_path: Path) -> None:
    process = launch(world, tmp_path, "--allow-user", "nobody")
    url = process.wait_ready()
    assert url
    home = world_readable_home(tmp_path)
    try:
        with pytest.raises(ConnectionError):  # root is not on the list: closed without an answer
            request(url, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        port = url.rstrip("/").rsplit(":", 1)[1]
        assert as_nobody([sys.executable, "-c", FETCH, port], client_env(home)).stdout.startswith("200 ")
    finally:
        process.stop()


# --- hop limit and resource limits ---

def test_hop_limit_is_set_and_inherited_by_accepted_sockets(world: World, tmp_path: Path) -> None:
    """§3.4: with --hop-limit 1 a reply cannot travel past the first router. Linux copies the listening
    socket's TTL to accepted sockets, which is checked here on a plain socket pair."""
    with socket.socket() as server:
        server.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as _client:
            accepted, _ = server.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 1
    process = launch(world, tmp_path, "--hop-limit", "1")
    try:
        url = process.wait_ready()
        assert url and get(url, CREDS, token(url)).text == "role-01"
    finally:
        process.stop()


async def serve_tracked(max_connections: int, keepalive: float = 30.0) -> tuple[web.ServerRunner, int]:
    async def hello(request: web.BaseRequest) -> web.Response:
        return web.Response(text="hi")

    runner = web.ServerRunner(TrackedServer(hello, max_connections, keepalive_timeout=keepalive))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


async def test_slow_request_headers_are_cut_off() -> None:
    """Slowloris: a connection still sending its headers when the keep-alive timeout runs out is closed."""
    runner, port = await serve_tracked(max_connections=10, keepalive=1.0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), timeout=60) == b""  # closed, without an answer
        writer.close()
    finally:
        await runner.cleanup()


# --- secrets hygiene ---

def test_secrets_stay_in_memory_and_out_of_process_title_and_environment(world: World, tmp_path: Path) -> None:
    """Nothing is written but the container token file; /proc/PID/cmdline and environ hold no secret that
    the daemon handed out."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    token_file = work / "token"
    process = launch(world, home, "--container-credentials", "--container-token-file", str(token_file),
                     env={"TMPDIR": str(work), "HOME": str(home)})
    try:
        url = process.wait_ready()
        assert url
        tok = token(url)
        doc = json.loads(get(url, CREDS + "role-01", tok).body)
        secrets = [tok, doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"], token_file.read_text()]
        pid = process.proc.pid
        exposed = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
        for secret in secrets:
            assert secret.encode() not in exposed
    finally:
        assert process.stop() == 0
    assert [p.name for p in work.iterdir()] == ["token"]
    assert sorted(p.name for p in home.iterdir()) == ["empty-aws-file"]  # what the test itself put there
