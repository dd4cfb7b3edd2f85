"""SIGHUP reloads under continuous client traffic: zero failed requests, kept connections, no gap."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from metadata_proxy import scenario
from tests.conftest import World, launch
from tests.support.http import get, request, token
from tests.support.net import free_port
from tests.support.notify import NotifySocket

CREDS = "/latest/meta-data/iam/security-credentials/"


@dataclass
class Traffic:
    """Workers that fetch credentials as botocore does, each over one kept-alive connection, until stopped."""

    port: int
    workers: int = 4
    stop: threading.Event = field(default_factory=threading.Event)
    done: int = 0
    failures: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.workers)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            while not self.stop.is_set():
                try:
                    conn.request("PUT", "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
                    tok = conn.getresponse().read().decode()
                    conn.request("GET", CREDS, headers={"X-aws-ec2-metadata-token": tok})
                    name = conn.getresponse().read().decode()
                    conn.request("GET", CREDS + name, headers={"X-aws-ec2-metadata-token": tok})
                    reply = conn.getresponse()
                    doc = json.loads(reply.read())
                    if reply.status != 200 or doc.get("Code") != "Success":
                        raise AssertionError(f"{reply.status} {doc.get('Code')}")
                except Exception as error:  # every kind of failure counts, connection drops included
                    with self._changed:
                        self.failures.append(repr(error))
                        self._changed.notify_all()
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                else:
                    with self._changed:
                        self.done += 1
                        self._changed.notify_all()
        finally:
            conn.close()

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def wait_for(self, count: int) -> None:
        """Until `count` more fetches succeed (proof that traffic flows at this point)."""
        with self._changed:
            target = self.done + count
            assert self._changed.wait_for(lambda: self.done >= target or self.failures, timeout=120)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


def write_config(path: Path, roles: list[tuple[str, int, int]], extra: str = "") -> None:
    """roles: (role ARN, port, duration)."""
    tables = "".join(f'\n[[role]]\nrole_arn = "{arn}"\nport = {port}\nduration_seconds = {duration}\n'
                     for arn, port, duration in roles)
    path.write_text(extra + tables)


def test_reloads_under_traffic_lose_no_request(world: World, role_04: str, tmp_path: Path,
                                               notify: NotifySocket) -> None:
    port_01, port_04 = free_port(), free_port()
    config = tmp_path / "config.toml"
    write_config(config, [(scenario.ROLE_01_ARN, port_01, 3600)])
    process = launch(world, tmp_path, "--config", str(config), role_arn=None, env={"NOTIFY_SOCKET": notify.path})

    def reload() -> None:
        process.proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1")
        notify.wait_for("READY", "1")

    try:
        assert process.wait_ready() == f"http://127.0.0.1:{port_01}/"
        url_01 = f"http://127.0.0.1:{port_01}/"
        first_key = json.loads(get(url_01, CREDS + "role-01", token(url_01)).body)["AccessKeyId"]
        with Traffic(port_01) as traffic:
            traffic.wait_for(20)
            # 1. A changed role (new session length: a new AssumeRole input) and an added role.
            write_config(config, [(scenario.ROLE_01_ARN, port_01, 1800), (role_04, port_04, 3600)])
            reload()
            traffic.wait_for(20)
            url_04 = f"http://127.0.0.1:{port_04}/"
            assert get(url_04, CREDS, token(url_04)).text == "role-04"
            assert json.loads(get(url_01, CREDS + "role-01", token(url_01)).body)["AccessKeyId"] != first_key
            # 2. An invalid configuration changes nothing.
            config.write_text(config.read_text() + "\nbogus_key = 1\n")
            reload()
            traffic.wait_for(20)
            assert get(url_04, CREDS, token(url_04)).text == "role-04"
            # 3. A removed role stops; the kept one goes on.
            write_config(config, [(scenario.ROLE_01_ARN, port_01, 1800)])
            reload()
            traffic.wait_for(20)
            with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port_04), 5):
                pass
        assert traffic.failures == []
        assert traffic.done >= 80
    finally:
        assert process.stop() == 0
    log = process.stderr
    assert "reload failed, still running the previous configuration" in log and "bogus_key" in log
    assert log.count("reloaded: serving") == 2
    assert "Traceback" not in log


def test_a_reload_that_tightens_the_allow_list_applies_to_the_next_request(world: World, tmp_path: Path,
                                                                           notify: NotifySocket) -> None:
    """Even on a connection that was opened, and allowed, before the reload."""
    me = os.geteuid()
    port = free_port()
    config = tmp_path / "config.toml"
    write_config(config, [(scenario.ROLE_01_ARN, port, 3600)], f"allow_uid = [{me}]\n")
    process = launch(world, tmp_path, "--config", str(config), role_arn=None, env={"NOTIFY_SOCKET": notify.path})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    put = ("PUT", "/latest/api/token", None, {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    try:
        assert process.wait_ready()
        conn.request(*put)
        assert conn.getresponse().read() and conn.sock is not None  # allowed, and kept alive
        write_config(config, [(scenario.ROLE_01_ARN, port, 3600)], f"allow_uid = [{me + 1}]\n")
        process.proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1")
        assert "rejected" not in notify.wait_for("READY", "1").get("STATUS", "")
        try:
            conn.request(*put)
            reply = conn.getresponse()
            assert reply.status == 403 and b"may not use metadata-proxy" in reply.read()
        except (ConnectionError, http.client.RemoteDisconnected):
            pass  # closed at once: refused all the same
        with pytest.raises(ConnectionError):  # a new connection of a uid not on the list is closed at once
            request(f"http://127.0.0.1:{port}/", *put[:2], put[3])
    finally:
        conn.close()
        assert process.stop() == 0
