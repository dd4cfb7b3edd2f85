"""The daemon's lifecycle: startup, main loop, shutdown (as uvicorn's Server), and reloads carried out from a plan.

Startup binds every socket first (so a port of 0 is known and a taken port fails at once), but listeners start
accepting only once every role's first credentials are stored: before that a client gets "connection refused"
rather than a request that would wait on STS (peers.md "first fetch times out"). Then readiness is announced,
on stdout and to systemd. One AsyncExitStack tears down whatever startup got to; a reload has a stack of its
own that undoes its steps (new sockets, new token files, new refresher tasks) unless it commits.

A stop (SIGTERM, SIGINT) wins over anything in progress: the first credentials, a source-credential lookup, a
reload waiting for a new role. Nothing a reload reads can block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TypeVar

import boto3

from metadata_proxy.addresses import endpoint_url, loopback_for
from metadata_proxy.admin import AdminRoutes
from metadata_proxy.audit import AuditTrail
from metadata_proxy.clock import Clock, SystemClock
from metadata_proxy.config import RoleConfig, ServeConfig
from metadata_proxy.errors import PermanentStartupError, StartupError
from metadata_proxy.gate import HostCheck
from metadata_proxy.ledger import Ledger
from metadata_proxy.listeners import Endpoint, Listener, bind_socket
from metadata_proxy.metrics import Metrics
from metadata_proxy.model import Credentials, RoleSpec, format_time, region_of
from metadata_proxy.notify import Notifier, heartbeat
from metadata_proxy.refresher import Refresher, RoleState
from metadata_proxy.reloader import Reloader
from metadata_proxy.routes import Shared, role_routes
from metadata_proxy.source import NoSourceCredentials, drop_self_pointing, proxy_hint, source_session
from metadata_proxy.store import CredentialStore
from metadata_proxy.sts import AssumeRoleClient, StsError
from metadata_proxy.threads import Stopped, in_daemon_thread, unless_stopped
from metadata_proxy.tokenfile import default_token_dir, ensure_private_dir, load_or_create_token
from metadata_proxy.tokens import TokenAuthority
from metadata_proxy.transparent import TransparentEndpoint, group_members

log = logging.getLogger("metadata_proxy")
T = TypeVar("T")



class Daemon:
    def __init__(self, config: ServeConfig, clock: Clock | None = None,
                 load_config: Callable[[], ServeConfig] | None = None, notifier: Notifier | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.load_config = load_config
        self.environ: MutableMapping[str, str] = os.environ  # what boto3 reads for the source credentials
        self.stop_requested = asyncio.Event()
        self.ledger = Ledger()  # every request answered, read by the metrics and the audit trail
        self.metrics = Metrics(self.ledger)
        self.audit = AuditTrail(self.ledger)
        self.notifier = notifier or Notifier(os.environ)
        self.refresher: Refresher | None = None
        self.listeners: list[Listener] = []
        self.admin: Endpoint | None = None
        self.transparent: TransparentEndpoint | None = None  # transparent mode's endpoint and rules
        self.last_heartbeat = time.monotonic()
        self.reload_rejected: str | None = None  # when and why the last reload was refused, for the status line
        self.session: boto3.Session | None = None
        self.assumer: AssumeRoleClient | None = None
        self._wake = asyncio.Event()
        self._reload_requested = False
        self.store = CredentialStore(self.clock)
        self._shared = Shared(store=self.store, tokens=TokenAuthority(self.clock.time), metrics=self.metrics,
                              now=self.clock.time, started_at=self.clock.time())

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

    # --- lifecycle ---

    async def run(self, on_ready: Callable[[list[Listener]], None] = lambda listeners: None) -> None:
        """Serves until request_stop(); raises StartupError (or ConfigError) if it cannot start."""
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.notifier.close)
            stack.push_async_callback(self._shutdown)
            try:
                await self._startup()
            except Stopped:
                log.info("stopped before the first credentials arrived")
                return
            beating = asyncio.create_task(heartbeat(self.notifier, self._beat))
            stack.callback(beating.cancel)
            auditing = asyncio.create_task(self.audit.run(lambda: self.config.audit_interval))
            stack.callback(auditing.cancel)
            self.notifier.send("READY=1", f"STATUS={self.status()}")
            on_ready(self.listeners)
            await self._main_loop()
            self.notifier.send("STOPPING=1", "STATUS=stopping")
            log.info("stopping: finishing in-flight requests")

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

    async def _startup(self) -> None:
        config = self.config
        self.listeners = [self.bind(role) for role in config.roles]
        if config.admin_port is not None:
            host = loopback_for(config.host)  # the admin listener is loopback-only, whatever --host says
            sock = bind_socket(host, config.admin_port)
            self.admin = Endpoint(sock, endpoint_url(host, sock.getsockname()[1]))
        if config.intercepting:  # bound now, so intercepted clients are refused until the roles are ready
            self.transparent = TransparentEndpoint(config, self._shared)
            await self.transparent.write_rules()
        for listener in self.listeners:
            for name in drop_self_pointing(self.environ, config.host, listener.port):
                log.info("ignoring %s for the source credentials: it points at this daemon", name)
        tokens = self.container_tokens(config) if config.container_credentials else {}
        try:
            self.session = await self.wait_unless_stopped(in_daemon_thread(source_session))
        except NoSourceCredentials as error:
            raise (PermanentStartupError if error.permanent else StartupError)(str(error)) from None
        self.assumer = AssumeRoleClient(self.session, self.clock.time, timeout=config.sts_timeout)
        self.refresher = Refresher(self._assume, self.store, self.clock, on_outcome=self._on_outcome)
        self.metrics.watch(self.refresher, self.clock.time)
        region = region_of(config.region, self.session.region_name)
        for listener in self.listeners:
            listener.spec = RoleSpec.of(listener.role, config.sts_endpoint_url, region)
            listener.token_file, listener.token = tokens.get(listener.role.name, (None, None))
            self.refresher.start(listener.spec)
            log.info("assuming %s as session %s%s", listener.role.role_arn, listener.role.role_session_name,
                     " with a session policy" if listener.role.session_policy else "")
        try:
            await self.wait_unless_stopped(self.all_ready(listener.spec for listener in self.listeners))
        except StsError as error:
            raise PermanentStartupError(f"AssumeRole of {error.role_arn} failed: {error}; {error.hint}") from None
        for listener in self.listeners:
            await self.serve(listener)
        if self.transparent is not None:
            self.transparent.route(config, self.listeners, self.refresher.states)
            await self.transparent.start(self.ledger)
        if self.admin is not None:
            self.admin.routes = AdminRoutes(self.metrics, self.refresher, self.clock.time, lambda: self.last_heartbeat)
            await self.admin.start(HostCheck(self.admin.sock.getsockname()[0]), self.ledger)
            log.info("admin listener on %s: /metrics /healthz /readyz", self.admin.url)
        if hint := proxy_hint(self.environ):
            log.warning("%s", hint)

    async def _assume(self, spec: RoleSpec) -> Credentials:
        assert self.assumer is not None
        return await in_daemon_thread(self.assumer.assume, spec)  # read per call: a reload may replace it

    async def _main_loop(self) -> None:
        while not self.stop_requested.is_set():
            await self._wake.wait()
            self._wake.clear()
            if self._reload_requested and not self.stop_requested.is_set():
                self._reload_requested = False
                await self.reload()

    async def _shutdown(self) -> None:
        for endpoint in [*self.listeners, *([self.admin] if self.admin else [])]:
            await endpoint.close()
        if self.transparent is not None:
            await self.transparent.close()
        if self.refresher is not None:
            await self.refresher.stop()
        self.audit.flush()  # what the listeners answered since the last record, now that they are closed


    async def wait_unless_stopped(self, awaitable: Awaitable[T]) -> T:
        return await unless_stopped(self.stop_requested, awaitable)

    async def all_ready(self, specs: Iterable[RoleSpec | None]) -> None:
        assert self.refresher is not None
        for spec in specs:
            assert spec is not None
            await self.refresher.wait_ready(spec)

    # --- listeners ---

    def bind(self, role: RoleConfig) -> Listener:
        sock = bind_socket(self.config.host, role.port)
        return Listener(role, sock, endpoint_url(self.config.host, sock.getsockname()[1]))

    def container_tokens(self, config: ServeConfig) -> dict[str, tuple[str, str]]:
        """role name -> (token file, token), reading an operator's file or creating one."""
        tokens = {}
        for role in config.roles:
            path = role.container_token_file
            if path is None:
                directory = default_token_dir(self.environ)
                ensure_private_dir(directory, config.container_token_group)
                path = os.path.join(directory, f"{role.name}.token")
            tokens[role.name] = (path, load_or_create_token(path, config.container_token_group))
        return tokens

    def install_routes(self, listener: Listener) -> None:
        assert self.refresher is not None and listener.spec is not None
        role = listener.role
        # The allow-list, narrowed to the users the role is mapped to: such a role is theirs on its own port too.
        owners = frozenset(role.users).union(*map(group_members, role.groups)) if role.mapped else None
        allowed = self.config.allowed_uids
        listener.allowed = allowed if owners is None else owners if allowed is None else allowed & owners
        listener.audit_role = role.role_arn  # its one role, set with the routes as a reload may change it
        listener.routes = role_routes(self._shared, self.config, listener.role, listener.spec,
                                      self.refresher.states[listener.spec], listener.token)

    async def serve(self, listener: Listener) -> None:
        self.install_routes(listener)
        await listener.start(HostCheck(self.config.host), self.ledger, self.config.hop_limit)
        assert listener.spec is not None
        if not ipaddress.ip_address(self.config.host).is_loopback:
            log.warning("listening on non-loopback %s: every host that reaches it can take %s's credentials",
                        self.config.host, listener.spec.role_name)
        log.info("ready: serving %s on %s (IMDSv2 tokens %s)", listener.spec.role_arn, listener.url,
                 "optional" if self.config.allow_imdsv1 else "required")
        for name, value in listener.exports[1:]:
            log.info("container credentials for %s: %s=%s", listener.role.name, name, value)

    # --- status ---

    def _on_outcome(self, state: RoleState, seconds: float) -> None:
        self.metrics.record_assume_role(state, seconds)
        if state.last_error is None and self.listeners and self.listeners[0].routes is not None:
            self.notifier.send(f"STATUS={self.status()}")

    def status(self) -> str:
        """One line for systemctl status: what is served where, when it was last refreshed, a rejected reload."""
        parts = []
        for listener in self.listeners:
            state = self.refresher.states.get(listener.spec) if self.refresher and listener.spec else None
            last = format_time(state.last_success) if state and state.last_success else "never"
            parts.append(f"{listener.role.name} on {listener.url} (last refresh {last})")
        line = "serving " + "; ".join(parts) if parts else "starting"
        return line + (f"; {self.reload_rejected}" if self.reload_rejected else "")

    def _beat(self) -> None:
        self.last_heartbeat = time.monotonic()

    async def reload(self) -> None:
        """Re-reads the configuration and moves to it, or keeps the running one (reloader.py)."""
        await Reloader(self).reload()
