"""Logs: JSON lines with structured fields, and never a secret, in any line of a full run."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from metadata_proxy import scenario
from metadata_proxy.logs import JournalPrefix, ThrottleFilter, syslog_priority
from tests.conftest import World, launch
from tests.support.http import get, request, token
from tests.support.net import free_port
from tests.support.processes import daemon_env

CREDS = "/latest/meta-data/iam/security-credentials/role-01"


def test_json_logs_and_no_secret_anywhere(world: World, tmp_path: Path) -> None:
    """Every log line of a run that handed out IMDS credentials, container credentials and tokens, and every
    metric, is searched for each secret handed out (keys, session tokens, IMDSv2 and container tokens). At
    DEBUG, so the line per request and the audit records are both there."""
    admin_port = free_port()
    process = launch(world, tmp_path, "--log-format", "json", "--log-level", "debug", "--container-credentials",
                     "--admin-port",
                     str(admin_port), "--container-token-file", str(tmp_path / "role-01.token"))
    try:
        url = process.wait_ready()
        assert url, process.stderr
        secrets = [world.source.access_key_id, world.source.secret_access_key, world.source.session_token]
        for ttl in ("60", "21600"):
            tok = token(url, ttl)
            doc = json.loads(get(url, CREDS, tok).body)
            extended = json.loads(get(url, CREDS.replace("credentials", "credentials-extended"), tok).body)
            secrets += [tok, doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"], extended["Token"]]
        container_token = (tmp_path / "role-01.token").read_text()
        container = json.loads(request(url, "GET", "/v1/credentials/role-01", {"Authorization": container_token}).body)
        secrets += [container_token, container["SecretAccessKey"], container["Token"]]
        request(url, "GET", "/v1/credentials/role-01", {"Authorization": container_token + "x"})  # a refusal
        get(url, CREDS, secrets[3] + "tampered")
        metrics = get(f"http://127.0.0.1:{admin_port}/", "/metrics").text
    finally:
        assert process.stop() == 0
    lines = process.stderr_lines
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    refresh = next(e for e in entries if e.get("event") == "refresh")
    assert refresh["role"] == scenario.ROLE_01_ARN and refresh["outcome"] == "success"
    assert refresh["expires"].endswith("Z") and refresh["duration_s"] >= 0
    access = [e for e in entries if e.get("event") == "request"]
    assert {"remote", "method", "path", "status", "latency_ms", "route"} <= set(access[0])
    assert any(e["route"] == "credentials" and e["status"] == 200 for e in access)
    audited: dict[str, int] = {}
    for entry in entries:
        if entry.get("event") == "audit":
            audited[entry["route"]] = audited.get(entry["route"], 0) + entry["count"]
    assert audited == {"token": 2, "imds-credentials": 4, "container-credentials": 1, "refused": 2}
    everything = "\n".join(lines) + metrics + "\n".join(process.stdout_seen)
    for secret in secrets:
        assert secret not in everything


def test_repeated_errors_are_one_line_a_minute_with_the_number_held_back() -> None:
    """A record that repeats (EMFILE on accept, say) is written once per 60 s; the next one written says how
    many were held back; another kind of record is not held back by it."""
    now = [1000.0]
    throttle = ThrottleFilter(60.0, lambda: now[0])

    def record(message: str, error: Exception | None = None) -> logging.LogRecord:
        exc_info = (type(error), error, None) if error else None
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, exc_info)

    first = record("socket.accept() out of system resource", OSError(24, "Too many open files"))
    assert throttle.filter(first) and first.getMessage() == "socket.accept() out of system resource"
    assert not any(throttle.filter(record("socket.accept() out of system resource", OSError(24, "x")))
                   for _ in range(4999))
    assert throttle.filter(record("another error"))
    now[0] += 59.9
    assert not throttle.filter(record("socket.accept() out of system resource", OSError(24, "x")))
    now[0] += 0.1
    later = record("socket.accept() out of system resource", OSError(24, "x"))
    assert throttle.filter(later)
    assert later.getMessage() == "socket.accept() out of system resource (5000 more like this held back)"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_each_line_carries_its_syslog_priority_when_stderr_is_the_journal(
        world: World, tmp_path: Path, log_format: str) -> None:
    """systemd names the stream it connected in JOURNAL_STREAM (device:inode). Here that stream is a file, so
    the test knows its inode; a refused AssumeRole gives info lines, then the error line that ends the run."""
    stderr_path = tmp_path / "stderr"

    def serve(journal_inode_offset: int) -> list[str]:
        world.proxy.fail_next("AssumeRole", "denied")
        with stderr_path.open("w") as stderr:
            status = os.fstat(stderr.fileno())
            env = daemon_env(tmp_path, **world.source.environ(),
                             JOURNAL_STREAM=f"{status.st_dev}:{status.st_ino + journal_inode_offset}")
            result = subprocess.run([sys.executable, "-m", "metadata_proxy", "serve", "--role-arn",
                                     scenario.ROLE_01_ARN, "--port", "0", "--region", scenario.REGION,
                                     "--sts-endpoint-url", world.sts_url, "--log-format", log_format],
                                    env=env, stderr=stderr, stdout=subprocess.DEVNULL, timeout=120)
        assert result.returncode == 4
        return stderr_path.read_text().splitlines()

    lines = serve(0)
    (assuming,) = [line for line in lines if "assuming arn:aws:iam::111111110001:role/role-01" in line]
    assert assuming.startswith("<6>")
    assert lines[-1].startswith("<3>metadata-proxy: error: AssumeRole of arn:aws:iam::111111110001:role/role-01 "
                                "failed: AccessDenied")
    assert all(re.match(r"<[3-7]>", line) for line in lines)
    if log_format == "json":
        assert all(json.loads(line[3:]) for line in lines[:-1])

    # The near miss: JOURNAL_STREAM inherited from elsewhere (another inode) leaves the lines alone.
    plain = serve(1)
    assert plain[-1].startswith("metadata-proxy: error: AssumeRole of") and not any(
        re.match(r"<\d>", line) for line in plain)


def test_a_multi_line_record_gets_the_prefix_on_every_line() -> None:
    record = logging.LogRecord("metadata_proxy", logging.WARNING, __file__, 1, "first\nsecond", None, None)
    assert JournalPrefix(logging.Formatter("%(message)s")).format(record) == "<4>first\n<4>second"
    assert [syslog_priority(level) for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO,
                                                 logging.DEBUG)] == [2, 3, 4, 6, 7]
