"""Listening sockets: binding, accepting, the connection cap, and the uid of each connection's peer.

A socket is bound early (so a taken port fails at once and a port of 0 is known) and starts accepting
later, once there is something to serve. Every request then passes the gate (gate.py) before a route sees
it. A listener's routes can be swapped in place (a reload), so its socket and open connections survive a
change of configuration.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from metadata_proxy.addresses import container_path
from metadata_proxy.config import RoleConfig
from metadata_proxy.errors import StartupError
from metadata_proxy.gate import Handler, HostCheck, guarded
from metadata_proxy.metrics import Metrics
from metadata_proxy.model import RoleSpec
from metadata_proxy.peercred import transport_uid

log = logging.getLogger("metadata_proxy")
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
