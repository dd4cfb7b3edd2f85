"""No local user can deny credentials to another (a real daemon, and the real user `nobody` as the attacker):
one user holding more idle and half-sent connections than the daemon allows in all does not stop another
from getting credentials, a flood costs a handful of log lines, and a low descriptor limit is no storm."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import World, launch
from tests.support.http import get, token
from tests.support.processes import DaemonProcess

NOBODY = pwd.getpwnam("nobody")
CREDS = "/latest/meta-data/iam/security-credentials/role-01"
pytestmark = [pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                 reason="the attacker runs as another user: needs root and setpriv"),
              pytest.mark.timeout(180)]

# Opens COUNT connections to PORT and holds them: every other one has sent half a request (slowloris).
# Connections the daemon closes are simply held closed. Prints "holding" when all are open.
HOLDER = """
import resource, socket, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for number in range(count):
    connection = socket.create_connection(("127.0.0.1", port))
    if number % 2:
        try:
            connection.send(b"GET /latest/api/token HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nX-Slow: ")
        except OSError:
            pass
    held.append(connection)
print("holding", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def hold() -> Iterator:
    holders: list[subprocess.Popen[str]] = []

    def start(url: str, count: int) -> None:
        port = url.rstrip("/").rsplit(":", 1)[1]
        holder = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups", "--",
             sys.executable, "-c", HOLDER, port, str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={"PATH": os.environ["PATH"]})
        holders.append(holder)
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"

    yield start
    for holder in holders:
        holder.communicate(timeout=60)  # closing its stdin ends it


def served(url: str) -> bool:
    """An SDK's fetch: a token, then the credentials."""
    reply = get(url, CREDS, token(url))
    return reply.status == 200 and b'"Code": "Success"' in reply.body


def log_while_held(process: DaemonProcess, hold, connections: int) -> list[str]:
    """Holds that many connections as nobody, checks that root is served five times meanwhile, stops the
    daemon (exit 0), and returns what it logged from the moment it was ready."""
    url = process.wait_ready()
    assert url, process.stderr
    before = len(process.stderr_lines)
    try:
        hold(url, connections)
        assert [served(url) for _ in range(5)] == [True] * 5
    finally:
        assert process.stop() == 0
    flood = process.stderr_lines[before:]
    assert len(flood) <= 30, flood
    return flood


def test_one_user_holding_every_slot_does_not_stop_another(world: World, tmp_path: Path, hold,
                                                           loop_name: str) -> None:
    """nobody holds 1,200 connections (the limit is 1,024 in all); root still gets credentials, five times."""
    flood = log_while_held(launch(world, tmp_path, loop=loop_name), hold, 1200)
    assert not [line for line in flood if "Traceback" in line]


def test_a_refused_user_is_closed_at_once_and_holds_nothing(world: World, tmp_path: Path, hold,
                                                            loop_name: str) -> None:
    """With an allow-list, nobody's 1,200 connections are closed as they arrive: the allowed user is served,
    and the refusals are one warning and one audit record."""
    flood = log_while_held(launch(world, tmp_path, "--allow-uid", str(os.geteuid()), loop=loop_name), hold, 1200)
    refusals = [line for line in flood if f"uid {NOBODY.pw_uid} (nobody)" in line]
    assert len(refusals) == 2, refusals  # the warning at once, the audit record with the count at the stop
    assert "refused connections from uid 65534 (nobody): not an allowed local user" in refusals[0]
    assert "audit: uid 65534 (nobody) refused role arn:aws:iam::" in refusals[1]
    assert ", 1200 times, first " in refusals[1]


@pytest.mark.skipif(not shutil.which("prlimit"), reason="needs prlimit (util-linux)")
def test_a_low_descriptor_limit_is_no_storm(world: World, tmp_path: Path, hold, loop_name: str) -> None:
    """Under a limit of 256 descriptors (hard and soft), nobody's 600 connections never reach EMFILE: the cap
    stays below the limit, root is served, and there is no traceback."""
    limited = launch(world, tmp_path, loop=loop_name, wrapper=("prlimit", "--nofile=256:256", "--"))
    flood = log_while_held(limited, hold, 600)
    assert not [line for line in flood if "Traceback" in line or "Too many open files" in line], flood
