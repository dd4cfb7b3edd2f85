"""The gate in front of every route, in-process: the Host check (DNS rebinding), the local-user allow-list, the
last-resort 500, and what each request leaves behind (the /metrics counts, the audit trail, the DEBUG line).

The daemon-process tests (test_imds.py, test_security.py, test_connections.py) see the same answers from outside;
these pin each decision with its near misses, fast enough for mutation testing (python -m tests.mutation)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from metadata_proxy.audit import AuditTrail
from metadata_proxy.gate import HostCheck, guarded, printable
from metadata_proxy.ledger import Ledger
from metadata_proxy.logs import QUIET, JsonFormatter, set_level
from metadata_proxy.metrics import Metrics
from metadata_proxy.request import GatedRequest
from tests.support.gated import GatedTestServer

ROLE = "arn:aws:iam::111111111111:role/role-01"
START = 1_800_000_000.0  # 2027-01-15T08:00:00Z


# --- the Host check ---

@pytest.mark.parametrize("host", [
    "localhost", "LOCALHOST", "localhost.", "localhost:8080", " localhost ", "127.0.0.1", "127.0.0.1:80",
    "127.0.0.2", "127.255.255.254:1", "[::1]", "[::1]:80", "::1", "127.0.0.1.",
])
def test_loopback_names_are_accepted(host: str) -> None:
    check = HostCheck("127.0.0.1")
    assert check.allows(host) is True
    assert check.allows(host) is True  # and again, from the memo


# Host header values only, judged in memory: nothing here connects to 169.254.169.254, so no isolated network
# namespace is needed.
@pytest.mark.parametrize("host", [
    "localhost.attacker.example", "127.0.0.1.attacker.example", "attacker.example", "attacker.example:80",
    "[::1].attacker.example", "[::1]x", "[::1]:x", "localhost:x", "localhost:", "localhost:\u0663",
    "127.0.0.1:1\x00", "localhost:80:80", "10.0.0.1", "[::2]", "0.0.0.0", "[::1]:", "local host",
    "169.254.169.254", "[127.0.0.1]x", "[::1]x80", "[::1]:x1", "[::1]]:80",
])
def test_other_names_are_refused(host: str) -> None:
    """Near misses of accepted names: a loopback name as a prefix, a port that is not one, a non-loopback address."""
    check = HostCheck("127.0.0.1")
    assert check.allows(host) is False
    assert check.allows(host) is False


def test_a_request_without_host_is_accepted() -> None:
    assert HostCheck("127.0.0.1").allows(None) is True  # HTTP/1.0 carries no name an attacker could rebind


def test_the_bound_address_is_accepted_and_its_neighbour_refused() -> None:
    check = HostCheck("192.0.2.10")
    assert check.allows("192.0.2.10:9254") is True
    assert check.allows("192.0.2.11:9254") is False
    assert check.allows("localhost") is True


def test_a_wildcard_listener_accepts_any_address_but_no_name() -> None:
    check = HostCheck("0.0.0.0")
    assert check.allows("192.0.2.11") is True
    assert check.allows("[2001:db8::1]:80") is True
    assert check.allows("attacker.example") is False
    assert check.allows("192.0.2.11.attacker.example") is False


def test_the_addresses_a_listener_also_answers_for_are_accepted_and_their_neighbours_refused() -> None:
    """The transparent endpoint: intercepted clients arrive with the IMDS address they meant to reach."""
    check = HostCheck("127.0.0.1", also=("169.254.169.254", "fd00:ec2::254"))
    assert check.allows("169.254.169.254") is True
    assert check.allows("[fd00:ec2::254]:80") is True
    assert check.allows("169.254.169.253") is False
    assert check.allows("[fd00:ec2::253]") is False
    assert check.allows("169.254.169.254.attacker.example") is False
    assert HostCheck("127.0.0.1").allows("169.254.169.254") is False


def test_past_the_memo_every_name_is_still_judged() -> None:
    check = HostCheck("127.0.0.1")
    for n in range(300):
        assert check.allows(f"attacker-{n}.example") is False
    assert check.allows("localhost") is True
    assert check.allows("localhost.attacker.example") is False


# --- the gate around a route ---

@dataclass
class Gate:
    """The endpoint the gate reads (its routes, allow-list and role) and what the gate leaves behind."""

    routes: Callable[[GatedRequest], object]
    metrics: Metrics
    audit: AuditTrail
    allowed: set[int] | None
    uid: int | None  # the peer's uid as the listener determined it
    audit_role: str | None = ROLE
    client: TestClient | None = None

    async def get(self, path: str = "/latest/meta-data/", host: str | None = None) -> tuple[int, str]:
        headers = {"Host": host} if host is not None else {}
        assert self.client is not None
        async with self.client.get(path, headers=headers) as reply:
            return reply.status, await reply.text()

    def counted(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def ticking(latency: float) -> Callable[[], float]:
    """A latency clock: each request starts at `latency` seconds and ends at twice that, so it takes exactly
    `latency` seconds (a float minus one at least half its size is exact), and a latency on a bucket's bound
    lands on that bound. A non-zero start tells a difference from a sum."""
    readings = iter(value for _ in range(1000) for value in (latency, 2 * latency))
    return lambda: next(readings)


@pytest.fixture
async def gate(aiohttp_client) -> Callable[..., object]:
    async def make(route: Callable[[GatedRequest], object], allowed: set[int] | None = None,
                   uid: int | None = 1000, latency: float = 0.0025,
                   clock: Callable[[], float] = lambda: START) -> Gate:
        ledger = Ledger()
        state = Gate(route, Metrics(ledger), AuditTrail(ledger), allowed, uid)
        handler = guarded(state, HostCheck("127.0.0.1"), ledger, clock, ticking(latency))  # type: ignore[arg-type]
        state.client = await aiohttp_client(GatedTestServer(handler, lambda: state.uid))
        return state

    return make


async def credentials(request: GatedRequest) -> web.Response:
    request.label = ("credentials", "")
    return web.Response(text="the credentials")


async def unclaimed(request: GatedRequest) -> web.Response:
    return web.Response(status=404, text="Not Found")


@pytest.fixture
def audited(caplog: pytest.LogCaptureFixture) -> Callable[[], list[tuple[object, ...]]]:
    caplog.set_level(logging.INFO, logger="metadata_proxy.audit")
    return lambda: [(r.uid, r.role, r.route, r.count) for r in caplog.records if getattr(r, "event", None) == "audit"]


async def test_a_foreign_host_is_403_before_the_route_and_counted(gate, audited) -> None:
    served = await gate(credentials)
    assert await served.get(host="localhost.attacker.example") == (403, "Forbidden: Host not allowed")
    assert served.counted("metadata_proxy_requests_refused_total", reason="host") == 1
    assert served.counted("metadata_proxy_requests_total", route="unknown", status="403") == 1
    assert await served.get(host="localhost") == (200, "the credentials")  # the near miss passes
    assert served.counted("metadata_proxy_requests_total", route="credentials", status="200") == 1
    assert audited() == [(1000, ROLE, "imds-credentials", 1)]  # the first handout, at once; the refusal waits


@pytest.mark.parametrize(("allowed", "uid", "status"), [
    (None, None, 200),  # no allow-list: everyone, even a peer whose uid could not be determined
    ({1000}, 1000, 200),
    ({1000}, 1001, 403),  # the uid next to an allowed one
    ({1000}, 0, 403),  # root too, unless listed
    ({1000}, None, 403),  # an undeterminable peer is denied
    (set(), 1000, 403),  # an empty list allows nobody
])
async def test_the_allow_list_decides_per_request(gate, allowed: set[int] | None, uid: int | None,
                                                  status: int) -> None:
    served = await gate(credentials, allowed, uid)
    expected = "the credentials" if status == 200 else "Forbidden: this local user may not use metadata-proxy"
    assert await served.get() == (status, expected)
    assert served.counted("metadata_proxy_requests_refused_total", reason="uid") == (status == 403)
    assert served.counted("metadata_proxy_requests_total", route="unknown" if status == 403 else "credentials",
                          status=str(status)) == 1


@pytest.mark.parametrize(("latency", "bucket"), [(0.0002, "0.0005"), (0.0005, "0.0005"), (0.0007, "0.001"),
                                               (0.002, "0.0025"), (0.03, "0.05"), (0.9, "1.0"), (1.0, "1.0"),
                                               (2.0, "+Inf")])
async def test_the_latency_histogram_puts_each_answer_in_its_bucket(gate, latency: float, bucket: str) -> None:
    """A bucket holds the answers up to and including its bound (0.5 ms is in the first, 1 s in the last but +Inf).
    The first request of a route adds a new ledger entry, the next two update it: both paths land alike."""
    served = await gate(credentials, latency=latency)
    for _ in range(3):
        assert (await served.get())[0] == 200
    bounds = ["0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "+Inf"]
    below = bounds[:bounds.index(bucket)]
    for bound in bounds:
        assert served.counted("metadata_proxy_request_duration_seconds_bucket", route="credentials", le=bound) == \
            (0 if bound in below else 3), bound
    assert served.counted("metadata_proxy_request_duration_seconds_count", route="credentials") == 3
    assert served.counted("metadata_proxy_request_duration_seconds_sum", route="credentials") == \
        pytest.approx(3 * latency)


async def test_a_tightened_allow_list_applies_to_the_next_request(gate) -> None:
    """The list is read per request: a reload that drops a uid refuses its next request."""
    served = await gate(credentials, {1000, 1001})
    assert (await served.get())[0] == 200
    served.allowed = {1001}
    assert await served.get() == (403, "Forbidden: this local user may not use metadata-proxy")
    served.allowed = None
    assert (await served.get())[0] == 200


async def test_refusals_and_tokens_are_audited_with_their_uid_and_the_role(gate, audited) -> None:
    served = await gate(credentials, {1000}, uid=1001)
    await served.get()
    await served.get(host="attacker.example")

    async def token(request: GatedRequest) -> web.Response:
        request.label = ("token", "")
        return web.Response(text="a token")

    tokens = await gate(token, uid=1001)
    await tokens.get()
    await tokens.get(host="attacker.example")  # refused before the route: no token
    assert audited() == []  # neither is a handout: both wait for the interval
    served.audit.flush()
    tokens.audit.flush()
    assert audited() == [(1001, ROLE, "refused", 2), (1001, ROLE, "token", 1), (1001, ROLE, "refused", 1)]


async def test_each_request_is_audited_under_the_role_it_got(gate, audited) -> None:
    """The transparent endpoint serves several roles through one listener: the route says which one it served;
    a request no route names a role for is audited under the endpoint's."""
    other = "arn:aws:iam::111111111111:role/other"

    async def either(request: GatedRequest) -> web.Response:
        if request.path == "/other":
            request.served_role = other
        return await credentials(request)

    served = await gate(either)
    await served.get("/other")
    await served.get("/mine")
    assert audited() == [(1000, other, "imds-credentials", 1), (1000, ROLE, "imds-credentials", 1)]


async def test_the_audit_trail_has_the_time_of_the_first_and_last_request_of_each_interval(gate, caplog) -> None:
    """The first request of a key opens its ledger entry (written at once: the first handout); the later ones
    update that entry in place, and the next record spans exactly them."""
    caplog.set_level(logging.INFO, logger="metadata_proxy.audit")
    seconds = iter(range(10))
    served = await gate(credentials, clock=lambda: START + next(seconds))

    def written() -> list[tuple[object, ...]]:
        return [(r.route, r.count, r.first, r.last) for r in caplog.records if getattr(r, "event", None) == "audit"]

    for _ in range(3):
        assert (await served.get())[0] == 200
    served.audit.flush()
    assert written() == [("imds-credentials", 1, "2027-01-15T08:00:00Z", "2027-01-15T08:00:00Z"),
                         ("imds-credentials", 2, "2027-01-15T08:00:01Z", "2027-01-15T08:00:02Z")]
    assert (await served.get())[0] == 200  # the next interval: only what came after the last record
    served.audit.flush()
    assert written()[2:] == [("imds-credentials", 1, "2027-01-15T08:00:03Z", "2027-01-15T08:00:03Z")]


class Answer(web.Response):
    """A response of a class of its own: the gate must still take it as an answer, not as something to await."""


@pytest.mark.parametrize("answer", [lambda: web.Response(text="at once"), lambda: Answer(text="at once")],
                         ids=["response", "subclass"])
async def test_a_route_may_answer_without_awaiting(gate, answer) -> None:
    def at_once(request: GatedRequest) -> web.Response:
        request.label = ("metadata", "")
        return answer()

    served = await gate(at_once)
    assert await served.get() == (200, "at once")


async def test_only_a_handout_or_a_refusal_is_audited(gate, audited) -> None:
    async def metadata(request: GatedRequest) -> web.Response:
        request.label = ("metadata", "")
        return web.Response(text="i-0123456789abcdef0")

    async def no_credentials(request: GatedRequest) -> web.Response:
        request.label = ("credentials", "")
        return web.Response(status=503, text="no valid credentials")

    for route, answer in ((unclaimed, (404, "Not Found")), (metadata, (200, "i-0123456789abcdef0")),
                          (no_credentials, (503, "no valid credentials"))):
        served = await gate(route)
        assert await served.get() == answer
        served.audit.flush()
    assert audited() == []


async def test_a_route_that_raises_is_a_500_and_one_line_without_the_query(gate, caplog) -> None:
    async def broken(request: GatedRequest) -> web.Response:
        raise RuntimeError("a bug")

    served = await gate(broken)
    with caplog.at_level(logging.ERROR, logger="metadata_proxy"):
        assert await served.get("/latest/x\x7f") == (500, "Internal Server Error")
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "internal error on GET /latest/x%7F"
    assert served.counted("metadata_proxy_requests_total", route="unknown", status="500") == 1
    assert (await served.get(host="attacker.example"))[0] == 403  # still serving


async def test_the_debug_line_has_method_path_status_and_latency_and_no_header(gate, caplog) -> None:
    served = await gate(unclaimed, latency=0.0123456)
    with caplog.at_level(logging.DEBUG, logger="metadata_proxy.access"):
        async with served.client.get("/latest//meta-data/?q=1", headers={"X-aws-ec2-metadata-token": "tok-secret"}):
            pass
    (record,) = [r for r in caplog.records if r.name == "metadata_proxy.access"]
    assert record.getMessage() == "127.0.0.1 GET /latest/meta-data 404 12.3ms"
    entry = json.loads(JsonFormatter().format(record))
    assert {key: entry[key] for key in ("event", "remote", "method", "path", "status", "latency_ms", "route")} == {
        "event": "request", "remote": "127.0.0.1", "method": "GET", "path": "/latest/meta-data", "status": 404,
        "latency_ms": 12.346, "route": "unknown"}
    assert "tok-secret" not in caplog.text


async def test_without_debug_no_line_per_request(gate, caplog) -> None:
    served = await gate(unclaimed)
    with caplog.at_level(logging.INFO, logger="metadata_proxy.access"):
        await served.get()
    assert [r for r in caplog.records if r.name == "metadata_proxy.access"] == []


async def test_the_log_level_set_at_start_or_by_a_reload_decides_the_line_per_request(gate, caplog) -> None:
    """--log-level (set_level, at start and on reload) sets the access logger's own level, which the gate reads
    first: at info no line, after a reload to debug one line per request, after one back to info none again."""
    served = await gate(unclaimed)
    loggers = [logging.getLogger(), logging.getLogger("metadata_proxy.access"),
               *(logging.getLogger(name) for name in QUIET)]
    saved = [logger.level for logger in loggers]
    lines = lambda: [r.getMessage() for r in caplog.records if r.name == "metadata_proxy.access"]  # noqa: E731
    try:
        set_level("info")
        await served.get()
        assert lines() == []
        set_level("debug")
        await served.get()
        assert lines() == ["127.0.0.1 GET /latest/meta-data 404 2.5ms"]
        set_level("info")
        await served.get()
        assert len(lines()) == 1
    finally:
        for logger, level in zip(loggers, saved, strict=True):
            logger.setLevel(level)


def test_printable_escapes_control_characters_and_bounds_the_length() -> None:
    assert printable("/a\x00b\nc") == "/a\\x00b\\x0ac"
    assert printable("/" + "x" * 199) == "/" + "x" * 199
    assert printable("/" + "x" * 200) == "/" + "x" * 199 + "..."
    assert printable("/abcdef", limit=3) == "/ab..."
