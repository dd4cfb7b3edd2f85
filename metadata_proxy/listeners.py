"""Listening sockets: binding, accepting, the uid of each connection's peer and its place in the connection table.

A socket is bound early (so a taken port fails at once and a port of 0 is known) and starts accepting
later, once there is something to serve. Every request then passes the gate (gate.py) before a route sees
it. A listener's routes can be swapped in place (a reload), so its socket and open connections survive a
change of configuration.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Hashable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from metadata_proxy.addresses import container_path
from metadata_proxy.config import RoleConfig
from metadata_proxy.connections import ACCEPT_BATCH, MAX_CONNECTIONS, ConnectionTable, descriptor_budget
from metadata_proxy.errors import StartupError
from metadata_proxy.gate import UID_REFUSED, Handler, HostCheck, Routes, guarded
from metadata_proxy.ledger import CONNECTION, Ledger
from metadata_proxy.logs import Throttle, ThrottleFilter
from metadata_proxy.model import RoleSpec
from metadata_proxy.peercred import describe, socket_uid
from metadata_proxy.request import GatedRequest

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

# Repeated errors from asyncio (EMFILE on accept) and aiohttp's server are one line per kind per minute.
protocol_log.addFilter(ThrottleFilter())
logging.getLogger("asyncio").addFilter(ThrottleFilter())

# Requests to this daemon are tiny; anything larger is not a client we serve. keepalive_timeout closes a
# connection that is idle, or still sending its headers (slowloris), that many seconds after it opened or
# after its last answer.
HTTP_LIMITS = {"max_line_size": 4096, "max_field_size": 4096, "max_headers": 64, "keepalive_timeout": 30.0}
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


_shared: ConnectionTable | None = None


def shared_connections() -> ConnectionTable:
    """The process's one connection table, sized (and the descriptor limit raised) on first use."""
    global _shared
    if _shared is None:
        _shared = ConnectionTable(min(MAX_CONNECTIONS, descriptor_budget()))
    return _shared


class GatedRequestHandler(RequestHandler):
    """aiohttp's connection protocol, asking its server whether to keep a connection before it reads from it:
    a refused connection is closed before aiohttp starts anything for it, so nothing is left to fail later.
    It holds the uid of its peer, decided then, for each of its requests."""

    peer_uid: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._manager
        assert isinstance(server, TrackedServer)
        if not server.admit(self, transport):
            self._manager = None  # aiohttp's connection_lost then has nothing to undo
            transport.close()
            return
        super().connection_made(transport)


def _idle(handler: Hashable) -> bool:
    return not getattr(handler, "_request_in_progress", False)  # aiohttp sets it while a handler runs


class TrackedServer(web.Server):
    """aiohttp's low-level server that decides, when a connection is accepted, whose it is and whether to keep
    it: the peer's uid is looked up once (and forgotten with the connection, so a reused port is looked up
    afresh), a uid outside the allow-list is closed at once, and the rest take a place in the connection table.
    Its requests are GatedRequests that carry their connection's uid.
    """

    def __init__(self, handler: Handler, connections: ConnectionTable | int,
                 allowed_uids: Callable[[], frozenset[int] | None] = lambda: None,
                 on_refused: Callable[[int | None], None] = lambda uid: None,
                 uid_of: Callable[[socket.socket | None], int | None] = socket_uid, **kwargs: object) -> None:
        super().__init__(handler, request_factory=self._request, **kwargs)  # type: ignore[arg-type]
        self._table = connections if isinstance(connections, ConnectionTable) else ConnectionTable(connections)
        self._allowed_uids = allowed_uids
        self._on_refused = on_refused
        self._uid_of = uid_of
        self._throttle = Throttle()

    def __call__(self) -> RequestHandler:
        return GatedRequestHandler(self, loop=self._loop, **self._kwargs)

    def admit(self, handler: RequestHandler, transport: asyncio.BaseTransport) -> bool:
        uid = self._uid_of(transport.get_extra_info("socket"))
        allowed = self._allowed_uids()
        if allowed is not None and uid not in allowed:
            self._on_refused(uid)
            if (held := self._throttle.admit(("refused", uid))) is not None:
                log.warning("refused connections from %s: not an allowed local user%s", describe(uid),
                            f" ({held} more since the last line)" if held else "")
            return False
        admitted, victim = self._table.admit(handler, uid, _idle)
        if (not admitted or victim is not None) and (held := self._throttle.admit("full")) is not None:
            log.warning("connection limit reached (%d in all, %d per user): %s%s", self._table.cap,
                        self._table.share, "closing an older idle connection to make room" if admitted
                        else "refusing a new connection, every one that could make room is busy",
                        f" ({held} more since the last line)" if held else "")
        if victim is not None:
            victim.force_close()  # type: ignore[attr-defined]
        handler.peer_uid = uid  # type: ignore[attr-defined]  # a GatedRequestHandler (__call__)
        return admitted

    def connection_lost(self, handler, exc) -> None:  # type: ignore[no-untyped-def]
        self._table.remove(handler)
        super().connection_lost(handler, exc)

    def _request(self, message, payload, protocol, writer, task) -> GatedRequest:  # type: ignore[no-untyped-def]
        request = GatedRequest(message, payload, protocol, writer, task, self._loop)
        request.uid = protocol.peer_uid
        return request


class Endpoint:
    """A bound socket that serves whatever `routes` is at the moment a request arrives."""

    def __init__(self, sock: socket.socket, url: str) -> None:
        self.sock = sock
        self.url = url
        self.routes: Routes | None = None
        self.allowed: frozenset[int] | None = None  # who may connect (None: everyone), set with the routes
        # The role its audit records name when no route says which one it served (refused connections, the
        # gate's refusals); None: the role depends on the request.
        self.audit_role: str | None = None
        self._runner: web.ServerRunner | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    async def start(self, host_check: HostCheck, ledger: Ledger, hop_limit: int | None = None) -> None:
        if hop_limit is not None:  # accepted sockets inherit it from the listening one (Linux)
            if self.sock.family == socket.AF_INET6:
                self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hop_limit)
            else:
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hop_limit)

        def refused(uid: int | None) -> None:
            ledger.add((UID_REFUSED, CONNECTION, uid, self.audit_role), time.time(), 0.0)

        gate = guarded(self, host_check, ledger)  # type: ignore[arg-type]  # routes are set by now
        server = TrackedServer(gate, shared_connections(), lambda: self.allowed, refused, access_log=None,
                               logger=protocol_log, **HTTP_LIMITS)
        self._runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE)
        await self._runner.setup()
        # asyncio uses its backlog argument as the number of connections accepted in one turn of the loop too;
        # that batch is kept small (the descriptor budget counts it), then the kernel's queue is made long.
        await web.SockSite(self._runner, self.sock, backlog=ACCEPT_BATCH).start()
        self.sock.listen(BACKLOG)

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
