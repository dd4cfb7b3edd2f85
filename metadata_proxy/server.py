"""The daemon's lifecycle: bind, find source credentials, prefetch, serve, stop on a signal.

Start-up order matters. The socket is bound first (so a port of 0 is known and a taken port fails at once),
but it only starts accepting once the first credentials are cached: before that a client gets "connection
refused" rather than a request that would have to wait on STS (peers.md "first fetch times out"). Readiness
is then announced on stdout as the one line a user copies.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from metadata_proxy.cache import Clock, CredentialCache, Refresher, SystemClock
from metadata_proxy.config import ConfigError, RoleConfig, ServeConfig
from metadata_proxy.container import (
    ContainerRoutes,
    container_path,
    default_token_dir,
    ensure_private_dir,
    load_or_create_token,
)
from metadata_proxy.credentials import AssumeRoleClient, RoleSpec, StsError
from metadata_proxy.imds import ImdsRoutes, InstanceIdentity, normalize_path, text_response
from metadata_proxy.source import NoSourceCredentials, drop_self_pointing, source_session
from metadata_proxy.tokens import TokenAuthority

log = logging.getLogger("metadata_proxy")
access_log = logging.getLogger("metadata_proxy.access")

# Requests to this daemon are tiny; anything larger is not a client we serve.
HTTP_LIMITS = {"max_line_size": 4096, "max_field_size": 4096, "max_headers": 64}
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

    def __init__(self, bound_host: str) -> None:
        self._bound = ipaddress.ip_address(bound_host)

    def allows(self, host_header: str | None) -> bool:
        if host_header is None:
            return True
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


def guarded(routes: Handler, host_check: HostCheck, now: Callable[[], float] = time.perf_counter) -> Handler:
    """Wraps a listener's routes with the Host check, an access log line and a last-resort error handler.

    The access line has the method, the normalised path, the status and the latency: never a header, so no
    IMDSv2 token can reach the log, and the credential documents are never logged either.
    """

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        started = now()
        if not host_check.allows(request.headers.get("Host")):
            response: web.StreamResponse = text_response(403, "Forbidden: Host not allowed")
        else:
            try:
                response = await routes(request)
            except Exception:
                log.exception("internal error on %s %s", request.method, printable(request.raw_path))
                response = text_response(500, "Internal Server Error")
        access_log.info("%s %s %s %d %.1fms", request.remote, request.method,
                        printable(normalize_path(request.raw_path)), response.status, (now() - started) * 1000)
        return response

    return handle


def default_instance_id() -> str:
    """Stable per host, so tools that key on the instance id see the same one across restarts."""
    return "i-" + hashlib.sha256(socket.gethostname().encode()).hexdigest()[:17]


def proxy_hint(environ: dict[str, str] | os._Environ[str]) -> str | None:
    """botocore sends IMDS requests through HTTP_PROXY unless NO_PROXY matches (contract §1.2)."""
    proxied = any(environ.get(name) for name in ("HTTP_PROXY", "http_proxy"))
    no_proxy = environ.get("NO_PROXY", "") + "," + environ.get("no_proxy", "")
    if proxied and "127.0.0.1" not in no_proxy:
        return "HTTP_PROXY is set: clients also need NO_PROXY=127.0.0.1,localhost or botocore sends IMDS " \
               "requests to the proxy"
    return None


@dataclass
class Listener:
    """One role's endpoint: its socket, what it serves, and (once serving) its aiohttp runner."""

    role: RoleConfig
    sock: socket.socket
    url: str
    spec: RoleSpec | None = None
    token_file: str | None = None
    token: str | None = None
    runner: web.ServerRunner | None = None

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


class Daemon:
    def __init__(self, config: ServeConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.stop_requested = asyncio.Event()
        self.cache = CredentialCache(self.clock)
        self.refresher: Refresher | None = None
        self.listeners: list[Listener] = []
        self._tokens = TokenAuthority(self.clock.time)

    @property
    def url(self) -> str | None:
        """The first role's IMDS endpoint (the only one, unless a config file names several roles)."""
        return self.listeners[0].url if self.listeners else None

    def request_stop(self) -> None:
        self.stop_requested.set()

    async def run(self, on_ready: Callable[[list[Listener]], None] = lambda listeners: None) -> None:
        """Serves until request_stop(); raises StartupError (or ConfigError) if it cannot start."""
        config = self.config
        listeners: list[Listener] = []
        try:
            for role in config.roles:
                sock = bind_socket(config.host, role.port)
                listeners.append(Listener(role, sock, endpoint_url(config.host, sock.getsockname()[1])))
            for listener in listeners:
                for name in drop_self_pointing(os.environ, config.host, listener.sock.getsockname()[1]):
                    log.info("ignoring %s for the source credentials: it points at this daemon", name)
            if config.container_credentials:
                for listener in listeners:
                    listener.token_file, listener.token = self._container_token(listener.role)
            try:
                session = await asyncio.to_thread(source_session)
            except NoSourceCredentials as error:
                raise StartupError(str(error)) from None
            region = config.region or session.region_name or "us-east-1"
            assumer = AssumeRoleClient(session, self.clock.time)
            self.refresher = Refresher(lambda s: asyncio.to_thread(assumer.assume, s), self.cache, self.clock)
            for listener in listeners:
                role = listener.role
                listener.spec = RoleSpec(
                    role_arn=role.role_arn, session_name=role.role_session_name, external_id=role.external_id,
                    duration_seconds=role.duration_seconds, policy=role.session_policy,
                    sts_endpoint_url=config.sts_endpoint_url, region=region)
                self.refresher.start(listener.spec)
                log.info("assuming %s as session %s%s", role.role_arn, role.role_session_name,
                         " with a session policy" if role.session_policy else "")
            first_credentials = asyncio.gather(*(self.refresher.wait_ready(lst.spec) for lst in listeners))
            if not await self._until_stopped(first_credentials):
                return
            for listener in listeners:
                await self._serve(listener, region)
            self.listeners = listeners
            if hint := proxy_hint(os.environ):
                log.warning("%s", hint)
            on_ready(listeners)
            await self.stop_requested.wait()
            log.info("stopping: finishing in-flight requests")
        finally:
            for listener in listeners:
                if listener.runner is not None:
                    await listener.runner.cleanup()
                listener.sock.close()
            if self.refresher is not None:
                await self.refresher.stop()

    def _container_token(self, role: RoleConfig) -> tuple[str, str]:
        path = role.container_token_file
        if path is None:
            directory = default_token_dir(os.environ)
            ensure_private_dir(directory)
            path = os.path.join(directory, f"{role.name}.token")
        return path, load_or_create_token(path)

    async def _serve(self, listener: Listener, region: str) -> None:
        """Starts accepting on the listener's socket with routes for its role."""
        config, spec = self.config, listener.spec
        assert spec is not None and self.refresher is not None
        state = self.refresher.states[spec]
        identity = InstanceIdentity(
            instance_id=config.instance_id or default_instance_id(), region=region,
            availability_zone=config.availability_zone or f"{region}a", account_id=spec.account_id,
            pending_time=self.clock.time())
        handler: Handler = ImdsRoutes(spec, state, self.cache, self._tokens, identity,
                                      require_token=not config.allow_imdsv1, now=self.clock.time)
        if listener.token is not None:
            container = ContainerRoutes(spec, state, self.cache, listener.token, self.clock.time)
            handler = with_container_route(container_path(listener.role.name), container, handler)
        server = web.Server(guarded(handler, HostCheck(config.host)), access_log=None, **HTTP_LIMITS)
        listener.runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE)
        await listener.runner.setup()
        await web.SockSite(listener.runner, listener.sock).start()
        if not ipaddress.ip_address(config.host).is_loopback:
            log.warning("listening on non-loopback %s: every host that reaches it can take %s's credentials",
                        config.host, spec.role_name)
        log.info("ready: serving %s on %s (IMDSv2 tokens %s)", spec.role_arn, listener.url,
                 "optional" if config.allow_imdsv1 else "required")
        for name, value in listener.exports[1:]:
            log.info("container credentials for %s: %s=%s", listener.role.name, name, value)

    async def _until_stopped(self, awaitable: Awaitable[object]) -> bool:
        """Awaits it unless a stop comes first; StsError (a permanent start-up failure) becomes StartupError."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self.stop_requested.wait())
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not work.done():
            work.cancel()
            log.info("stopped before the first credentials arrived")
            return False
        try:
            work.result()
        except StsError as error:
            raise StartupError(f"AssumeRole of {error.role_arn} failed: {error}; {error.hint}") from None
        return True


def announce(listeners: list[Listener]) -> None:
    """The lines a user copies, on stdout: one export per variable, a comment naming each role if several."""
    for listener in listeners:
        if len(listeners) > 1:
            print(f"# {listener.role.name}: {listener.role.role_arn}")
        for name, value in listener.exports:
            print(f"export {name}={value}")
    sys.stdout.flush()


def run_daemon(config: ServeConfig) -> int:
    """Runs the daemon in this process until SIGTERM/SIGINT; returns the exit status."""

    async def main() -> None:
        daemon = Daemon(config)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, daemon.request_stop)
        await daemon.run(on_ready=announce)

    try:
        asyncio.run(main())
    except ConfigError as error:
        print(f"metadata-proxy: error: {error}", file=sys.stderr, flush=True)
        return 2
    except StartupError as error:
        print(f"metadata-proxy: error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0
