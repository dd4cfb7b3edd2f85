"""The gate every request passes before a route sees it, in this order:

1. the Host check (DNS-rebinding defence: the Host header must name this listener);
2. the local-user gate (with an allow-list, only the listed uids; an undeterminable peer is denied);
3. the route, behind a last-resort error handler (a bug answers 500, never ends the daemon);
4. accounting: one entry of the ledger per request, which the metrics and the audit trail (who got which role's
   credentials or tokens, or was refused; audit.py) read, and at DEBUG a line per request. None of them holds a
   header (so no token) nor a body.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from logging import DEBUG
from typing import Protocol

from aiohttp import hdrs, web

from metadata_proxy.imds import normalize_path, text_response
from metadata_proxy.ledger import Ledger
from metadata_proxy.logs import ACCESS
from metadata_proxy.request import GatedRequest

log = logging.getLogger("metadata_proxy")
access_log = logging.getLogger(ACCESS)

Handler = Callable[[GatedRequest], Awaitable[web.StreamResponse]]
# What a listener's routes are: a handler, or a function that answers at once when it can (a response) and
# returns an awaitable only when it must wait (the hot path then costs no coroutine of its own).
Routes = Callable[[GatedRequest], web.StreamResponse | Awaitable[web.StreamResponse]]
HOST_REFUSED = ("unknown", "host")  # the labels of the gate's own refusals
UID_REFUSED = ("unknown", "uid")


class Served(Protocol):
    """What the gate reads from its endpoint on every request: a reload replaces them in place, so a tightened
    allow-list applies to the next request of an open connection."""

    routes: Routes
    allowed: frozenset[int] | None  # the local uids that may use the endpoint (None: everyone)
    audit_role: str | None  # the role its audit records name when no route says which one it served


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
        # Host values already judged (None: no Host at all, accepted); the gate reads it before calling allows().
        self.memo: dict[str | None, bool] = {None: True}

    def allows(self, host_header: str | None) -> bool:
        known = self.memo.get(host_header)
        if known is None:
            assert host_header is not None
            known = self._judge(host_header)
            if len(self.memo) < self.MEMO:
                self.memo[host_header] = known
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


def guarded(served: Served, host_check: HostCheck, ledger: Ledger, clock: Callable[[], float] = time.time,
            now: Callable[[], float] = time.perf_counter) -> Handler:
    """Wraps an endpoint's routes with the Host check, the local-user allow-list, the ledger (which the metrics
    and the audit trail read), a DEBUG line per request and a last-resort error handler.

    `clock` gives the Unix time the audit trail reports, `now` the latency. The DEBUG line has the method, the
    normalised path, the status and the latency: never a header, so no IMDSv2 token can reach the log, and the
    credential documents are never logged either.
    """

    hosts = host_check.memo
    entries = ledger.entries
    enabled = access_log.isEnabledFor

    async def handle(request: GatedRequest) -> web.StreamResponse:
        started = now()
        response: web.StreamResponse
        # (the memo first: an accepted Host costs one lookup; anything else is judged, or refused, by allows())
        if not (hosts.get(host := request.headers.get(hdrs.HOST)) or host_check.allows(host)):
            request.label = HOST_REFUSED
            response = text_response(403, "Forbidden: Host not allowed")
        elif (allowed := served.allowed) is not None and request.uid not in allowed:
            request.label = UID_REFUSED
            response = text_response(403, "Forbidden: this local user may not use metadata-proxy")
        else:
            try:
                answer = served.routes(request)
                # (the exact-class test first: it is the common answer, and cheaper than isinstance)
                response = answer if type(answer) is web.Response or isinstance(answer, web.StreamResponse) \
                    else await answer
            except Exception:
                log.exception("internal error on %s %s", request.method, printable(request.raw_path))
                response = text_response(500, "Internal Server Error")
        moment = clock()
        elapsed = now() - started
        key = (request.label, response.status, request.uid, request.served_role or served.audit_role)
        # (the lookup here: an existing entry is the common case, and its update then costs one call, not two)
        if (entry := entries.get(key)) is None:
            ledger.add(key, moment, elapsed)
        else:
            entry.add(moment, elapsed)
        # Building the line costs more than the request. The logger's own level is read first: an attribute,
        # where asking logging is a call; above DEBUG no line can be written, any other level asks.
        if access_log.level <= DEBUG and enabled(DEBUG):
            path = printable(normalize_path(request.raw_path))
            access_log.debug("%s %s %s %d %.1fms", request.remote, request.method, path, response.status,
                            elapsed * 1000, extra={"event": "request", "remote": request.remote,
                                                   "method": request.method, "path": path, "status": response.status,
                                                   "latency_ms": round(elapsed * 1000, 3), "route": request.label[0]})
        return response

    return handle
