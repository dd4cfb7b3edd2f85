"""The daemon's lifecycle: bind, find source credentials, prefetch, serve, reload on SIGHUP, stop on SIGTERM.

Start-up order matters. Sockets are bound first (so a port of 0 is known and a taken port fails at once),
but they only start accepting once the first credentials are cached: before that a client gets "connection
refused" rather than a request that would have to wait on STS (peers.md "first fetch times out"). Then
readiness is announced: on stdout as the lines a user copies, and to systemd as READY=1.

A reload prefetches every new or changed role before anything changes, then swaps each kept listener's
routes in place (its socket and connections stay), starts new listeners and closes removed ones. If the
new configuration is invalid, or a new role cannot be assumed, nothing changes and the reason is logged.
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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

import boto3

from metadata_proxy.admin import AdminRoutes
from metadata_proxy.cache import Clock, CredentialCache, Refresher, RoleState, SystemClock
from metadata_proxy.config import ConfigError, RoleConfig, ServeConfig
from metadata_proxy.container import (
    ContainerRoutes,
    container_path,
    default_token_dir,
    ensure_private_dir,
    load_or_create_token,
)
from metadata_proxy.credentials import AssumeRoleClient, RoleSpec, StsError, format_time
from metadata_proxy.imds import ImdsRoutes, InstanceIdentity
from metadata_proxy.listeners import (
    Endpoint,
    Handler,
    HostCheck,
    Listener,
    StartupError,
    bind_socket,
    endpoint_url,
    reachable_host,
    with_container_route,
)
from metadata_proxy.logs import set_level
from metadata_proxy.metrics import Metrics
from metadata_proxy.notify import Notifier
from metadata_proxy.source import NoSourceCredentials, drop_self_pointing, source_session
from metadata_proxy.tokens import TokenAuthority

__all__ = ["Daemon", "StartupError", "endpoint_url", "reachable_host", "run_daemon"]

log = logging.getLogger("metadata_proxy")

HEARTBEAT = 1.0  # seconds between event-loop heartbeats (and the fastest watchdog ping)
RELOAD_PREFETCH_TIMEOUT = 60.0  # a reload gives up (and changes nothing) if new roles are not ready by then


def default_instance_id() -> str:
    """Stable per host, so tools that key on the instance id see the same one across restarts."""
    return "i-" + hashlib.sha256(socket.gethostname().encode()).hexdigest()[:17]


def proxy_hint(environ: Mapping[str, str]) -> str | None:
    """botocore sends IMDS requests through HTTP_PROXY unless NO_PROXY matches (contract §1.2)."""
    proxied = any(environ.get(name) for name in ("HTTP_PROXY", "http_proxy"))
    no_proxy = environ.get("NO_PROXY", "") + "," + environ.get("no_proxy", "")
    if proxied and "127.0.0.1" not in no_proxy:
        return "HTTP_PROXY is set: clients also need NO_PROXY=127.0.0.1,localhost or botocore sends IMDS " \
               "requests to the proxy"
    return None


def role_spec(role: RoleConfig, config: ServeConfig, region: str) -> RoleSpec:
    return RoleSpec(role_arn=role.role_arn, session_name=role.role_session_name, external_id=role.external_id,
                    duration_seconds=role.duration_seconds, policy=role.session_policy,
                    sts_endpoint_url=config.sts_endpoint_url, region=region)


class Daemon:
    def __init__(self, config: ServeConfig, clock: Clock | None = None,
                 load_config: Callable[[], ServeConfig] | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.load_config = load_config
        self.stop_requested = asyncio.Event()
        self.metrics = Metrics()
        self.notifier = Notifier(os.environ)
        self.cache = CredentialCache(self.clock)
        self.refresher: Refresher | None = None
        self.listeners: list[Listener] = []
        self.admin: Endpoint | None = None
        self.last_heartbeat = time.monotonic()
        self.reloads = 0  # completed reload attempts, successful or not (tests wait on it)
        self._tokens = TokenAuthority(self.clock.time)
        self._started_at = self.clock.time()
        self._wake = asyncio.Event()
        self._reload_requested = False
        self._region = "us-east-1"

    @property
    def url(self) -> str | None:
        """The first role's IMDS endpoint (the only one, unless a config file names several roles)."""
        return self.listeners[0].url if self.listeners else None

    def request_stop(self) -> None:
        self.stop_requested.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    async def run(self, on_ready: Callable[[list[Listener]], None] = lambda listeners: None) -> None:
        """Serves until request_stop(); raises StartupError (or ConfigError) if it cannot start."""
        heartbeat: asyncio.Task[None] | None = None
        try:
            if not await self._start():
                return
            heartbeat = asyncio.create_task(self._heartbeat())
            self.notifier.send("READY=1", f"STATUS={self.status()}")
            on_ready(self.listeners)
            while not self.stop_requested.is_set():
                await self._wake.wait()
                self._wake.clear()
                if self._reload_requested and not self.stop_requested.is_set():
                    self._reload_requested = False
                    await self.reload()
            self.notifier.send("STOPPING=1", "STATUS=stopping")
            log.info("stopping: finishing in-flight requests")
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            for endpoint in [*self.listeners, *([self.admin] if self.admin else [])]:
                await endpoint.close()
            if self.refresher is not None:
                await self.refresher.stop()
            self.notifier.close()

    async def start_in_background(self) -> asyncio.Task[None]:
        """Runs the daemon as a task of this event loop; returns the task once it serves. Raises why it could
        not start; a task that is already done means a stop came first."""
        ready = asyncio.Event()
        task = asyncio.create_task(self.run(on_ready=lambda _listeners: ready.set()))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()
        return task

    async def _start(self) -> bool:
        """Everything up to serving; False if a stop came first."""
        config = self.config
        for role in config.roles:
            self.listeners.append(self._bind(role))
        if config.admin_port is not None:
            self.admin = Endpoint(*self._bind_at(config.admin_port, admin=True))
        for listener in self.listeners:
            for name in drop_self_pointing(os.environ, config.host, listener.port):
                log.info("ignoring %s for the source credentials: it points at this daemon", name)
        if config.container_credentials:
            for listener in self.listeners:
                listener.token_file, listener.token = self._container_token(listener.role)
        try:
            session: boto3.Session = await asyncio.to_thread(source_session)
        except NoSourceCredentials as error:
            raise StartupError(str(error)) from None
        self._region = config.region or session.region_name or "us-east-1"
        assumer = AssumeRoleClient(session, self.clock.time, timeout=config.sts_timeout)
        self.refresher = Refresher(lambda s: asyncio.to_thread(assumer.assume, s), self.cache, self.clock,
                                   on_outcome=self._on_outcome)
        self.metrics.watch(self.refresher, self.clock.time)
        for listener in self.listeners:
            listener.spec = role_spec(listener.role, config, self._region)
            self.refresher.start(listener.spec)
            log.info("assuming %s as session %s%s", listener.role.role_arn, listener.role.role_session_name,
                     " with a session policy" if listener.role.session_policy else "")
        first = asyncio.gather(*(self.refresher.wait_ready(listener.spec) for listener in self.listeners))
        if not await self._until_stopped(first):
            return False
        for listener in self.listeners:
            listener.routes = self._routes_for(listener)
            await self._start_listener(listener)
        if self.admin is not None:
            self.admin.routes = AdminRoutes(self.metrics, self.refresher, self.clock.time, lambda: self.last_heartbeat)
            await self.admin.start(HostCheck(self.admin_host), self.metrics)
            log.info("admin listener on %s: /metrics /healthz /readyz", self.admin.url)
        if hint := proxy_hint(os.environ):
            log.warning("%s", hint)
        return True

    @property
    def admin_host(self) -> str:
        """The admin listener is loopback-only, whatever --host says."""
        return "::1" if ipaddress.ip_address(self.config.host).version == 6 else "127.0.0.1"

    def _bind_at(self, port: int, admin: bool = False) -> tuple[socket.socket, str]:
        host = self.admin_host if admin else self.config.host
        sock = bind_socket(host, port)
        return sock, endpoint_url(host, sock.getsockname()[1])

    def _bind(self, role: RoleConfig) -> Listener:
        return Listener(role, *self._bind_at(role.port))

    def _container_token(self, role: RoleConfig) -> tuple[str, str]:
        path = role.container_token_file
        if path is None:
            directory = default_token_dir(os.environ)
            ensure_private_dir(directory)
            path = os.path.join(directory, f"{role.name}.token")
        return path, load_or_create_token(path)

    def _routes_for(self, listener: Listener) -> Handler:
        config, spec = self.config, listener.spec
        assert spec is not None and self.refresher is not None
        state = self.refresher.states[spec]
        identity = InstanceIdentity(
            instance_id=config.instance_id or default_instance_id(), region=self._region,
            availability_zone=config.availability_zone or f"{self._region}a", account_id=spec.account_id,
            pending_time=self._started_at)
        routes: Handler = ImdsRoutes(spec, state, self.cache, self._tokens, identity, self.metrics,
                                     require_token=not config.allow_imdsv1, now=self.clock.time)
        if listener.token is not None:
            container = ContainerRoutes(spec, state, self.cache, listener.token, self.clock.time)
            routes = with_container_route(container_path(listener.role.name), container, routes)
        return routes

    async def _start_listener(self, listener: Listener) -> None:
        await listener.start(HostCheck(self.config.host), self.metrics, lambda: self.config.allowed_uids,
                             self.config.hop_limit)
        assert listener.spec is not None
        if not ipaddress.ip_address(self.config.host).is_loopback:
            log.warning("listening on non-loopback %s: every host that reaches it can take %s's credentials",
                        self.config.host, listener.spec.role_name)
        log.info("ready: serving %s on %s (IMDSv2 tokens %s)", listener.spec.role_arn, listener.url,
                 "optional" if self.config.allow_imdsv1 else "required")
        for name, value in listener.exports[1:]:
            log.info("container credentials for %s: %s=%s", listener.role.name, name, value)

    def _on_outcome(self, state: RoleState, seconds: float) -> None:
        self.metrics.record_assume_role(state, seconds)
        if state.last_error is None and self.listeners and self.listeners[0].routes is not None:
            self.notifier.send(f"STATUS={self.status()}")

    def status(self) -> str:
        """One line for systemctl status: what is served where, and when it was last refreshed."""
        parts = []
        for listener in self.listeners:
            state = self.refresher.states.get(listener.spec) if self.refresher and listener.spec else None
            last = format_time(state.last_success) if state and state.last_success else "never"
            parts.append(f"{listener.role.name} on {listener.url} (last refresh {last})")
        return "serving " + "; ".join(parts) if parts else "starting"

    async def _heartbeat(self) -> None:
        """Proves the event loop turns: /healthz reads it, and systemd's watchdog gets its pings from here."""
        interval = min(HEARTBEAT, self.notifier.watchdog_interval or HEARTBEAT)
        while True:
            self.last_heartbeat = time.monotonic()
            if self.notifier.watchdog_interval:
                self.notifier.send("WATCHDOG=1")
            await asyncio.sleep(interval)

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

    # --- reload ---

    async def reload(self) -> None:
        self.notifier.send("RELOADING=1", "STATUS=reloading the configuration")
        try:
            if self.load_config is None:
                raise ConfigError("no configuration to reload from")
            await self._apply(self.load_config())
        except (ConfigError, StartupError, StsError) as error:
            log.error("reload failed, still running the previous configuration: %s", error,
                      extra={"event": "reload", "outcome": "failure"})
        else:
            log.info("reloaded: %s", self.status(), extra={"event": "reload", "outcome": "success"})
        finally:
            self.reloads += 1
            self.notifier.send("READY=1", f"STATUS={self.status()}")

    async def _apply(self, new: ServeConfig) -> None:
        """Moves to the new configuration, or raises and leaves everything as it was."""
        assert self.refresher is not None
        old = self.config
        for name in ("host", "hop_limit", "admin_port", "log_format", "event_loop"):
            if getattr(new, name) != getattr(old, name):
                log.warning("%s changed: that takes a restart; keeping %s", name, getattr(old, name))
                new = replace(new, **{name: getattr(old, name)})
        current = {listener.role.name: listener for listener in self.listeners}
        plan: list[tuple[Listener, RoleConfig, bool]] = []  # (listener, its new role, newly bound?)
        old_specs = {listener.spec for listener in self.listeners}
        try:
            for role in new.roles:
                kept = current.get(role.name)
                if kept is not None and role.port in (0, kept.port):
                    plan.append((kept, role, False))
                else:
                    plan.append((self._bind(role), role, True))
            tokens = {role.name: self._container_token(role) for role in new.roles} \
                if new.container_credentials else {}
            specs = {role.name: role_spec(role, new, new.region or self._region) for role in new.roles}
            for spec in specs.values():
                self.refresher.start(spec)  # a spec already refreshed keeps its task and credentials
            ready = asyncio.gather(*(self.refresher.wait_ready(spec) for spec in specs.values()))
            try:
                await asyncio.wait_for(ready, RELOAD_PREFETCH_TIMEOUT)
            except TimeoutError:
                raise StartupError(f"the new roles were not ready within {RELOAD_PREFETCH_TIMEOUT:.0f} s") from None
        except BaseException:
            for listener, _role, fresh in plan:
                if fresh:
                    listener.sock.close()
            for spec in set(self.refresher.states) - old_specs:
                await self.refresher.stop(spec)
            raise
        # Commit: nothing below can fail for a reason the old configuration would not share.
        self.config = new
        if new.region:
            self._region = new.region
        listeners = []
        for listener, role, fresh in plan:
            listener.role, listener.spec = role, specs[role.name]
            listener.token_file, listener.token = tokens.get(role.name, (None, None))
            listener.routes = self._routes_for(listener)  # in place: the socket and its connections stay
            if fresh:
                await self._start_listener(listener)
            listeners.append(listener)
        removed = [listener for listener in self.listeners if listener not in listeners]
        self.listeners = listeners
        for listener in removed:
            log.info("no longer serving %s on %s", listener.role.role_arn, listener.url)
            await listener.close()
        for spec in old_specs - set(specs.values()):
            await self.refresher.stop(spec)
        set_level(new.log_level)


def announce(listeners: list[Listener]) -> None:
    """The lines a user copies, on stdout: one export per variable, a comment naming each role if several."""
    for listener in listeners:
        if len(listeners) > 1:
            print(f"# {listener.role.name}: {listener.role.role_arn}")
        for name, value in listener.exports:
            print(f"export {name}={value}")
    sys.stdout.flush()


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop (the `fast` extra) serves ~1.15x the requests here up to 32 connections; with 128 busy ones
    its tail latency grows (docs/performance.md), so it can be declined. "auto" uses it when installed."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("--event-loop uvloop: uvloop is not installed "
                              "(pip install 'metadata-proxy[fast]')") from None
        return None
    log.info("event loop: uvloop %s", uvloop.__version__)
    return uvloop.new_event_loop


def run_daemon(config: ServeConfig, load_config: Callable[[], ServeConfig] | None = None) -> int:
    """Runs the daemon in this process until SIGTERM/SIGINT (SIGHUP reloads); returns the exit status."""

    async def main() -> None:
        daemon = Daemon(config, load_config=load_config)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, daemon.request_stop)
        loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
        await daemon.run(on_ready=announce)

    try:
        with asyncio.Runner(loop_factory=event_loop_factory(config.event_loop)) as runner:
            runner.run(main())
    except ConfigError as error:
        print(f"metadata-proxy: error: {error}", file=sys.stderr, flush=True)
        return 2
    except StartupError as error:
        print(f"metadata-proxy: error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0
