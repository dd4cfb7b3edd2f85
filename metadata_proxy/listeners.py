"""Listening sockets and what every request goes through before a route sees it.

A socket is bound early (so a taken port fails at once and a port of 0 is known) and starts accepting
later, once there is something to serve. Each request then passes the gate: the Host check (DNS-rebinding
defence), a last-resort error handler, the metrics, and one access log line. A listener's routes can be
swapped in place (a reload), so its socket and open connections survive a change of configuration.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from metadata_proxy.config import RoleConfig
from metadata_proxy.container import container_path
from metadata_proxy.credentials import RoleSpec
from metadata_proxy.imds import LABEL, normalize_path, text_response
from metadata_proxy.metrics import Metrics
from metadata_proxy.peercred import transport_uid, user_name

log = logging.getLogger("metadata_proxy")
access_log = logging.getLogger("metadata_proxy.access")
protocol_log = logging.getLogger("metadata_proxy.http")  # what aiohttp says about requests it could not parse


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a malformed request with a traceback, at ERROR, quoting the offending bytes (which may
    be a header carrying a token). Make it one INFO line naming the client and the kind of error only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            error = record.exc_info[1]
            record.msg, record.args = "rejected a malformed request from %s: %s (%s)", (
                record.args[0] if isinstance(record.args, tuple) and record.args else "?",
                type(error).__name__, getattr(error, "code", 400))
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


protocol_log.addFilter(MalformedRequestFilter())

# Requests to this daemon are tiny; anything larger is not a client we serve. keepalive_timeout closes a
# connection that is idle, or still sending its headers (slowloris), that many seconds after it opened or
# after its last answer.
HTTP_LIMITS = {"max_line_size": 4096, "max_field_size": 4096, "max_headers": 64, "keepalive_timeout": 30.0}
MAX_CONNECTIONS = 1024  # open connections per listener; more are closed at once
BACKLOG = 1024  # connections the kernel may queue before we accept them (a burst of cold clients)
SHUTDOWN_GRACE = 10.0  # seconds in-flight requests get to finish after SIGTERM

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class StartupError(Exception):
    """The daemon cannot start; the message is the one line the user sees."""


def bind_socket(host: str, port: int) -> socket.socket:
    """Binds without listening: the port is reserved (and known), but nothing is accepted yet."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise StartupError(f"cannot listen on {host} port {port}: {error.strerror}") from None
    sock.setblocking(False)
    return sock


def endpoint_url(host: str, port: int) -> str:
    """With the trailing slash that AWS CLI v2 < 2.28.3 needs (contract §2)."""
    shown = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    return f"http://{shown}:{port}/"


def reachable_host(host: str) -> str:
    """Where a client on this host reaches a listener bound to host (a wildcard bind answers on loopback)."""
    address = ipaddress.ip_address(host)
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return host


class HostCheck:
    """DNS-rebinding defence (peers.md, aws-vault #578): the Host header must name this listener.

    Accepted: `localhost`, loopback addresses, and the bound address itself (any IP literal when bound to
    a wildcard address). A rebinding attack always arrives with the attacker's host name, which fails.
    A request without Host (HTTP/1.0) carries no name to rebind and is accepted.
    """

    MEMO = 256  # distinct Host values remembered (clients send one or two); a flood of others is re-parsed

    def __init__(self, bound_host: str) -> None:
        self._bound = ipaddress.ip_address(bound_host)
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
        name = host_header.strip().lower()
        if name.startswith("["):
            name = name[1:].split("]", 1)[0]
        elif name.count(":") == 1:
            name = name.split(":", 1)[0]
        name = name.rstrip(".")
        if name == "localhost":
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or address == self._bound or self._bound.is_unspecified


def printable(path: str, limit: int = 200) -> str:
    """A client-supplied path made safe for one log line (no control characters, bounded length)."""
    cleaned = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in path[:limit])
    return cleaned + ("..." if len(path) > limit else "")


def guarded(routes: Callable[[], Handler], host_check: HostCheck, metrics: Metrics,
            peer_uid: Callable[[web.BaseRequest], int | None] = lambda request: None,
            allowed_uids: Callable[[], frozenset[int] | None] = lambda: None,
            now: Callable[[], float] = time.perf_counter) -> Handler:
    """Wraps a listener's routes with the Host check, the local-user allow-list, metrics, an access log line
    and a last-resort error handler. routes() and allowed_uids() are read per request: a reload changes them.

    The access line has the method, the normalised path, the status and the latency: never a header, so no
    IMDSv2 token can reach the log, and the credential documents are never logged either.
    """

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        started = now()
        response: web.StreamResponse
        if not host_check.allows(request.headers.get("Host")):
            request[LABEL] = ("unknown", "host")
            response = text_response(403, "Forbidden: Host not allowed")
        elif (allowed := allowed_uids()) is not None and (uid := peer_uid(request)) not in allowed:
            request[LABEL] = ("unknown", "uid")
            who = "an undeterminable user" if uid is None else f"uid {uid} ({user_name(uid)})"
            log.warning("refused %s %s from %s: not an allowed local user", request.method,
                        printable(normalize_path(request.raw_path)), who)
            response = text_response(403, "Forbidden: this local user may not use metadata-proxy")
        else:
            try:
                response = await routes()(request)
            except Exception:
                log.exception("internal error on %s %s", request.method, printable(request.raw_path))
                response = text_response(500, "Internal Server Error")
        elapsed = now() - started
        try:
            route, reason = request[LABEL]
        except KeyError:  # a path no route claimed
            route, reason = "unknown", ""
        metrics.observe_request(route, response.status, elapsed)
        if reason:
            metrics.refused.labels(reason).inc()
        if access_log.isEnabledFor(logging.INFO):  # building the line costs more than the request otherwise
            path = printable(normalize_path(request.raw_path))
            access_log.info("%s %s %s %d %.1fms", request.remote, request.method, path, response.status,
                            elapsed * 1000, extra={"event": "request", "remote": request.remote,
                                                   "method": request.method, "path": path, "status": response.status,
                                                   "latency_ms": round(elapsed * 1000, 3), "route": route})
        return response

    return handle


class TrackedServer(web.Server):
    """aiohttp's low-level server plus a cap on open connections and, per connection, the peer's uid.

    The uid is looked up once per connection and forgotten with it, so a new connection from a reused port
    is looked up afresh.
    """

    def __init__(self, handler: Handler, max_connections: int, **kwargs: object) -> None:
        super().__init__(handler, **kwargs)  # type: ignore[arg-type]
        self._max_connections = max_connections
        self._uids: dict[object, int | None] = {}

    def connection_made(self, handler, transport) -> None:  # type: ignore[no-untyped-def]
        super().connection_made(handler, transport)
        if len(self._connections) > self._max_connections:
            log.warning("closing a new connection: %d are open, the limit is %d", len(self._connections),
                        self._max_connections)
            transport.close()

    def connection_lost(self, handler, exc) -> None:  # type: ignore[no-untyped-def]
        self._uids.pop(handler, None)
        super().connection_lost(handler, exc)

    def peer_uid(self, request: web.BaseRequest) -> int | None:
        handler = request.protocol
        if handler not in self._uids:
            self._uids[handler] = transport_uid(request.transport)
        return self._uids[handler]


class Endpoint:
    """A bound socket that serves whatever `routes` is at the moment a request arrives."""

    def __init__(self, sock: socket.socket, url: str) -> None:
        self.sock = sock
        self.url = url
        self.routes: Handler | None = None
        self._runner: web.ServerRunner | None = None

    def _routes(self) -> Handler:
        assert self.routes is not None, "routes are set before the endpoint starts"
        return self.routes

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    async def start(self, host_check: HostCheck, metrics: Metrics,
                    allowed_uids: Callable[[], frozenset[int] | None] = lambda: None,
                    hop_limit: int | None = None) -> None:
        if hop_limit is not None:  # accepted sockets inherit it from the listening one (Linux)
            if self.sock.family == socket.AF_INET6:
                self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hop_limit)
            else:
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hop_limit)
        server = TrackedServer(lambda request: gate(request), MAX_CONNECTIONS, access_log=None, logger=protocol_log,
                               **HTTP_LIMITS)
        gate = guarded(self._routes, host_check, metrics, server.peer_uid, allowed_uids)
        self._runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE)
        await self._runner.setup()
        await web.SockSite(self._runner, self.sock, backlog=BACKLOG).start()

    async def close(self) -> None:
        """Stops accepting, lets in-flight requests finish, closes the socket."""
        if self._runner is not None:
            await self._runner.cleanup()
        self.sock.close()


class Listener(Endpoint):
    """One role's endpoint: IMDS, and the container-credentials path when that is on."""

    def __init__(self, role: RoleConfig, sock: socket.socket, url: str) -> None:
        super().__init__(sock, url)
        self.role = role
        self.spec: RoleSpec | None = None
        self.token_file: str | None = None
        self.token: str | None = None

    @property
    def exports(self) -> list[tuple[str, str]]:
        """The variables a consumer sets, in the order they are announced."""
        pairs = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", self.url)]
        if self.token_file:
            pairs += [("AWS_CONTAINER_CREDENTIALS_FULL_URI", self.url.rstrip("/") + container_path(self.role.name)),
                      ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", self.token_file)]
        return pairs


def with_container_route(path: str, container: Handler, imds: Handler) -> Handler:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if normalize_path(request.raw_path) == path:
            return await container(request)
        return await imds(request)

    return handle
