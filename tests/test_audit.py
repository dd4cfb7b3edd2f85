"""The audit trail: one record per (uid, role, route kind) per interval with exact counts, the first credentials a
uid gets for a role at once, bounded under a flood, in both log formats, never a secret."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
from pathlib import Path

import pytest

from metadata_proxy import scenario
from metadata_proxy.audit import AuditTrail
from metadata_proxy.ledger import Key, Ledger
from metadata_proxy.logs import JsonFormatter
from tests.conftest import World, launch
from tests.support.http import get, request, token

ROLE = scenario.ROLE_01_ARN
OTHER_ROLE = "arn:aws:iam::111111111111:role/other"
START = 1_800_000_000.0  # 2027-01-15T08:00:00Z
CREDS = "/latest/meta-data/iam/security-credentials/role-01"


# What the gate adds to the ledger for each kind of request the trail reports.
LABELS = {"token": (("token", ""), 200), "imds-credentials": (("credentials", ""), 200),
          "imds-credentials-extended": (("credentials-extended", ""), 200),
          "container-credentials": (("container", ""), 200), "refused": (("unknown", "host"), 403),
          "refused-token": (("credentials", "token"), 401), "refused-connection": (("unknown", "uid"), None)}


class Trail:
    """An audit trail on a ledger, and the requests a gate would add to it, at the time the test sets."""

    def __init__(self) -> None:
        self.now = START
        self.ledger = Ledger()
        self.trail = AuditTrail(self.ledger)

    def record(self, uid: int | None, role: str | None, kind: str, seconds: float = 0.0002) -> None:
        label, status = LABELS[kind]
        key: Key = (label, status, uid, role)
        self.ledger.add(key, self.now, seconds)

    def flush(self) -> None:
        self.trail.flush()


def audit_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "audit"]


def fields(record: logging.LogRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in ("uid", "user", "role", "route", "count", "first", "last")}


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="metadata_proxy.audit")
    return caplog


def test_counts_are_exact_and_the_first_handout_is_written_at_once(captured: pytest.LogCaptureFixture) -> None:
    trail = clock = Trail()
    trail.record(1000, ROLE, "token")
    trail.record(1000, ROLE, "imds-credentials")
    assert [fields(r) for r in audit_records(captured)] == [  # at once, before any interval has passed
        {"uid": 1000, "user": user(1000), "role": ROLE, "route": "imds-credentials", "count": 1,
         "first": "2027-01-15T08:00:00Z", "last": "2027-01-15T08:00:00Z"}]
    for second in range(1, 5):
        clock.now = START + second
        trail.record(1000, ROLE, "imds-credentials")
    trail.record(1000, ROLE, "token")
    trail.record(65534, ROLE, "refused")
    trail.record(65534, ROLE, "refused")
    trail.record(None, ROLE, "refused")
    trail.record(1000, OTHER_ROLE, "container-credentials")  # another role: its first handout, at once
    assert len(audit_records(captured)) == 2
    trail.flush()
    summary = sorted((r.uid if r.uid is not None else -1, r.role, r.route, r.count, r.first, r.last)
                     for r in audit_records(captured))
    assert summary == [
        (-1, ROLE, "refused", 1, "2027-01-15T08:00:04Z", "2027-01-15T08:00:04Z"),
        (1000, ROLE, "imds-credentials", 1, "2027-01-15T08:00:00Z", "2027-01-15T08:00:00Z"),
        (1000, ROLE, "imds-credentials", 4, "2027-01-15T08:00:01Z", "2027-01-15T08:00:04Z"),
        (1000, ROLE, "token", 2, "2027-01-15T08:00:00Z", "2027-01-15T08:00:04Z"),
        (1000, OTHER_ROLE, "container-credentials", 1, "2027-01-15T08:00:04Z", "2027-01-15T08:00:04Z"),
        (65534, ROLE, "refused", 2, "2027-01-15T08:00:04Z", "2027-01-15T08:00:04Z"),
    ]
    trail.flush()  # nothing new: nothing written
    assert len(audit_records(captured)) == 6
    trail.record(1000, ROLE, "imds-credentials")  # no longer the first: waits for the interval
    assert len(audit_records(captured)) == 6
    clock.now = START + 60
    trail.record(1000, ROLE, "imds-credentials")
    trail.flush()  # the next interval: only what is new since the last record
    assert [(r.route, r.count, r.first, r.last) for r in audit_records(captured)[6:]] == [
        ("imds-credentials", 2, "2027-01-15T08:00:04Z", "2027-01-15T08:01:00Z")]


def user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "?"


def test_a_flood_is_a_handful_of_records(captured: pytest.LogCaptureFixture) -> None:
    trail = Trail()
    for _ in range(5000):
        trail.record(1000, ROLE, "imds-credentials")
        trail.record(65534, ROLE, "refused")
    trail.flush()
    counts = sorted((r.route, r.count) for r in audit_records(captured))
    assert counts == [("imds-credentials", 1), ("imds-credentials", 4999), ("refused", 5000)]


def test_past_4096_users_and_roles_a_first_handout_waits_for_the_interval(captured: pytest.LogCaptureFixture) -> None:
    """Who already had credentials is remembered for at most 4096 (uid, role) pairs: the 4096th new reader is
    still written at once, the 4097th with the rest at the interval."""
    trail = Trail()
    for uid in range(100_000, 104_096):
        trail.record(uid, ROLE, "imds-credentials")
    assert len(audit_records(captured)) == 4096
    trail.record(200_000, ROLE, "imds-credentials")
    assert len(audit_records(captured)) == 4096
    trail.flush()
    assert [(r.uid, r.route, r.count) for r in audit_records(captured)[4096:]] == [(200_000, "imds-credentials", 1)]


def test_text_and_json_formats(captured: pytest.LogCaptureFixture) -> None:
    trail = Trail()
    trail.record(0, ROLE, "imds-credentials")
    trail.record(None, ROLE, "refused")
    trail.record(None, ROLE, "refused")
    trail.flush()
    first, refused = audit_records(captured)
    assert first.getMessage() == (f"audit: uid 0 (root) imds-credentials role {ROLE}, 1 time, "
                                  "first 2027-01-15T08:00:00Z, last 2027-01-15T08:00:00Z")
    assert refused.getMessage() == (f"audit: an undeterminable user refused role {ROLE}, 2 times, "
                                    "first 2027-01-15T08:00:00Z, last 2027-01-15T08:00:00Z")
    entry = json.loads(JsonFormatter().format(refused))
    assert {key: entry[key] for key in ("event", "uid", "user", "role", "route", "count", "first", "last")} == {
        "event": "audit", "uid": None, "user": "?", "role": ROLE, "route": "refused", "count": 2,
        "first": "2027-01-15T08:00:00Z", "last": "2027-01-15T08:00:00Z"}
    assert entry["level"] == "info" and entry["logger"] == "metadata_proxy.audit"


async def test_a_timer_flushes_each_interval_not_each_request(captured: pytest.LogCaptureFixture) -> None:
    """The timer sleeps interval() seconds (read each time, so a reload can change it), then writes what is pending."""
    trail = Trail()
    asked: list[float] = []
    tick: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()

    async def sleep(seconds: float) -> None:
        asked.append(seconds)
        wake = asyncio.get_running_loop().create_future()
        await tick.put(wake)
        await wake

    intervals = iter([60.0, 5.0, 5.0])
    timer = asyncio.create_task(trail.trail.run(lambda: next(intervals), sleep))
    try:
        (await tick.get()).set_result(None)  # the first interval passes with nothing pending
        trail.record(1000, ROLE, "token")
        trail.record(1000, ROLE, "token")
        assert audit_records(captured) == []  # nothing written per request
        (await tick.get()).set_result(None)
        await tick.get()  # the timer flushed and sleeps again
        assert [(r.route, r.count) for r in audit_records(captured)] == [("token", 2)]
        assert asked == [60.0, 5.0, 5.0]
    finally:
        timer.cancel()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_daemon_writes_the_trail_and_no_line_per_request(world: World, tmp_path: Path, fmt: str,
                                                           loop_name: str) -> None:
    """A real daemon at default level: 300 credential GETs, 3 tokens, container credentials and refusals give a
    handful of audit records whose counts add up exactly; the pending ones are written when it stops; no secret
    appears in any line."""
    token_file = tmp_path / "role-01.token"
    process = launch(world, tmp_path, "--log-format", fmt, "--container-credentials", "--container-token-file",
                     str(token_file), loop=loop_name)
    url = process.wait_ready()
    assert url, process.stderr
    try:
        ready_lines = len(process.stderr_lines)
        tokens = [token(url) for _ in range(3)]
        docs = [json.loads(get(url, CREDS, tokens[i % 3]).body) for i in range(300)]
        container = json.loads(request(url, "GET", "/v1/credentials/role-01",
                                       {"Authorization": token_file.read_text()}).body)
        assert get(url, CREDS, tokens[0] + "x").status == 401
        assert request(url, "GET", "/v1/credentials/role-01", {"Authorization": "wrong"}).status == 403
        assert get(url, CREDS, headers={"Host": "attacker.example"}).status == 403
    finally:
        assert process.stop() == 0
    lines = process.stderr_lines[ready_lines:]
    assert len(lines) <= 12, lines  # no line per request: the audit records and the stop
    secrets = [*tokens, token_file.read_text(), docs[0]["SecretAccessKey"], docs[0]["Token"], docs[0]["AccessKeyId"],
               container["Token"]]
    for secret in secrets:
        assert not [line for line in process.stderr_lines if secret in line]
    me = os.geteuid()
    totals: dict[str, int] = {}
    if fmt == "json":
        for entry in map(json.loads, lines):
            if entry.get("event") == "audit":
                assert (entry["uid"], entry["user"], entry["role"]) == (me, user(me), scenario.ROLE_01_ARN)
                totals[entry["route"]] = totals.get(entry["route"], 0) + entry["count"]
    else:
        prefix = f"audit: uid {me} ({user(me)}) "
        for line in lines:
            if prefix in line:
                route, rest = line.split(prefix, 1)[1].split(" role ", 1)
                assert rest.startswith(scenario.ROLE_01_ARN + ", ")
                totals[route] = totals.get(route, 0) + int(rest.split(", ")[1].split()[0])
    assert totals == {"token": 3, "imds-credentials": 300, "container-credentials": 1, "refused": 3}


def test_one_record_per_user_role_and_kind_whatever_the_route_or_reason(captured: pytest.LogCaptureFixture) -> None:
    """Both IMDS credential documents are one kind; a refused Host, a refused token and a refused connection are
    one kind; a request no role was served for (the admin listener's, say) is not audited at all."""
    trail = Trail()
    trail.record(1000, ROLE, "imds-credentials")  # the first handout, at once
    trail.now = START + 10
    trail.record(1000, ROLE, "imds-credentials-extended")
    trail.now = START + 20
    trail.record(1000, ROLE, "imds-credentials")
    trail.record(1001, ROLE, "refused-connection")
    trail.now = START + 5  # the wall clock stepped back: first and last are still the earliest and the latest
    trail.record(1001, ROLE, "refused")
    trail.now = START + 30
    trail.record(1001, ROLE, "refused-token")
    trail.record(1000, None, "imds-credentials")
    trail.record(1000, None, "refused")
    trail.flush()
    assert [(r.uid, r.route, r.count, r.first, r.last) for r in audit_records(captured)] == [
        (1000, "imds-credentials", 1, "2027-01-15T08:00:00Z", "2027-01-15T08:00:00Z"),
        (1000, "imds-credentials", 2, "2027-01-15T08:00:10Z", "2027-01-15T08:00:20Z"),
        (1001, "refused", 3, "2027-01-15T08:00:05Z", "2027-01-15T08:00:30Z"),
    ]
