"""The gate every request passes before a route sees it, in this order:

1. the Host check (DNS-rebinding defence: the Host header must name this listener);
2. the local-user gate (with an allow-list, only the listed uids; an undeterminable peer is denied);
3. the route, behind a last-resort error handler (a bug answers 500, never ends the daemon);
4. accounting: the metrics, the audit trail (who got which role's credentials or tokens, or was refused;
   audit.py) and, at DEBUG, a line per request. None of them holds a header (so no token) nor a body.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from metadata_proxy.audit import CONTAINER_CREDENTIALS, IMDS_CREDENTIALS, REFUSED, TOKEN, AuditTrail
from metadata_proxy.imds import LABEL, normalize_path, text_response
from metadata_proxy.metrics import Metrics

log = logging.getLogger("metadata_proxy")
access_log = logging.getLogger("metadata_proxy.access")
# The routes the audit trail counts when they answer 200; every refusal is counted as REFUSED.
AUDITED = {"credentials": IMDS_CREDENTIALS, "credentials-extended": IMDS_CREDENTIALS,
           "container": CONTAINER_CREDENTIALS, "token": TOKEN}

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# What a listener's routes are: a handler, or a function that answers at once when it can (a response) and
# returns an awaitable only when it must wait (the hot path then costs no coroutine of its own).
Routes = Callable[[web.BaseRequest], web.StreamResponse | Awaitable[web.StreamResponse]]


class HostCheck:
    """DNS-rebinding defence (peers.md, aws-vault #578): the Host header must name this listener.

    Accepted: `localhost`, loopback addresses, and the bound address itself (any IP literal when bound to
    a wildcard address). A rebinding attack always arrives with the attacker's host name, which fails.
    A request without Host (HTTP/1.0) carries no name to rebind and is accepted. `also` names further
    addresses the listener answers for: the IMDS addresses on the transparent endpoint, where intercepted
    clients arrive with the Host they meant to reach.
    """

    MEMO = 256  # distinct Host values remembered (clients send one or two); a flood of others is re-parsed

    def __init__(self, bound_host: str, also: tuple[str, ...] = ()) -> None:
        self._bound = ipaddress.ip_address(bound_host)
        self._also = frozenset(ipaddress.ip_address(address) for address in also)
        self._memo: dict[str, bool] = {}

    def allows(self, host_header: str | None) -> bool:
        if host_header is None:
            return True
        known = self._memo.get(host_header)
        if known is None:
            known = self._judge(host_header)
            if len(self._memo) < self.MEMO:
                self._memo[host_header] = known
        return known

    def _judge(self, host_header: str) -> bool:
        name, port = _split_host(host_header.strip().lower())
        if port is not None and not (port.isascii() and port.isdigit()):
            return False  # "[::1].attacker.example" or "localhost:x": not a host and port at all
        name = name.rstrip(".")
        if name == "localhost":
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or address == self._bound or self._bound.is_unspecified or address in self._also


def _split_host(value: str) -> tuple[str, str | None]:
    """`[v6]:port`, `name:port` or a bare name/address -> (host, port or None). What follows `]` must be a
    port: anything else is returned as the port, to be refused."""
    if value.startswith("["):
        inside, _, rest = value[1:].partition("]")
        return inside, (rest[1:] if rest.startswith(":") else rest) if rest else None
    if value.count(":") == 1:
        name, port = value.split(":")
        return name, port
    return value, None


def printable(path: str, limit: int = 200) -> str:
    """A client-supplied path made safe for one log line (no control characters, bounded length)."""
    cleaned = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in path[:limit])
    return cleaned + ("..." if len(path) > limit else "")


def guarded(routes: Callable[[], Routes], host_check: HostCheck, metrics: Metrics,
            peer_uid: Callable[[web.BaseRequest], int | None] = lambda request: None,
            allowed_uids: Callable[[], frozenset[int] | None] = lambda: None,
            audit: AuditTrail | None = None,
            role: Callable[[web.BaseRequest], str | None] = lambda request: None,
            now: Callable[[], float] = time.perf_counter) -> Handler:
    """Wraps a listener's routes with the Host check, the local-user allow-list, metrics, the audit trail, a
    DEBUG line per request and a last-resort error handler. routes(), allowed_uids() and role() are read per
    request: a reload changes them (a tightened allow-list applies to the next request of an open connection).

    The DEBUG line has the method, the normalised path, the status and the latency: never a header, so no
    IMDSv2 token can reach the log, and the credential documents are never logged either.
    """

    observe = metrics.requests.observe

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        started = now()
        uid = peer_uid(request)
        response: web.StreamResponse
        if not host_check.allows(request.headers.get("Host")):
            request[LABEL] = ("unknown", "host")
            response = text_response(403, "Forbidden: Host not allowed")
        elif (allowed := allowed_uids()) is not None and uid not in allowed:
            request[LABEL] = ("unknown", "uid")
            response = text_response(403, "Forbidden: this local user may not use metadata-proxy")
        else:
            try:
                answer = routes()(request)
                # (the exact-class test first: it is the common answer, and cheaper than isinstance)
                response = answer if type(answer) is web.Response or isinstance(answer, web.StreamResponse) \
                    else await answer
            except Exception:
                log.exception("internal error on %s %s", request.method, printable(request.raw_path))
                response = text_response(500, "Internal Server Error")
        elapsed = now() - started
        try:
            route, reason = request[LABEL]
        except KeyError:  # a path no route claimed
            route, reason = "unknown", ""
        status = response.status
        observe(route, status, elapsed)
        if reason:
            metrics.refused.labels(reason).inc()
        if (audit is not None and (reason or (status == 200 and route in AUDITED))
                and (audited_role := role(request)) is not None):
            audit.record(uid, audited_role, REFUSED if reason else AUDITED[route])
        if access_log.isEnabledFor(logging.DEBUG):  # building the line costs more than the request otherwise
            path = printable(normalize_path(request.raw_path))
            access_log.debug("%s %s %s %d %.1fms", request.remote, request.method, path, response.status,
                            elapsed * 1000, extra={"event": "request", "remote": request.remote,
                                                   "method": request.method, "path": path, "status": response.status,
                                                   "latency_ms": round(elapsed * 1000, 3), "route": route})
        return response

    return handle
