"""Carrying out a reload: read the file, plan (reload_plan.py), prepare, then commit or undo.

Everything that can fail happens before the commit, under an AsyncExitStack that undoes it (new sockets, new
token files, new refresher tasks, a new STS timeout); the commit itself only rearranges what is ready. The
reload works on the daemon's own parts, as its friend: it is the daemon's lifecycle, kept in its own file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING

from metadata_proxy.config import ServeConfig
from metadata_proxy.errors import ConfigError, StartupError
from metadata_proxy.listeners import Listener
from metadata_proxy.logs import set_level
from metadata_proxy.model import format_time
from metadata_proxy.reload_plan import Bound, ReloadPlan, plan_reload
from metadata_proxy.sts import AssumeRoleClient, StsError
from metadata_proxy.threads import Stopped, in_daemon_thread

if TYPE_CHECKING:
    from metadata_proxy.daemon import Daemon

log = logging.getLogger("metadata_proxy")

RELOAD_PREFETCH_TIMEOUT = 60.0  # a reload gives up (and changes nothing) if new roles are not ready by then


class Reloader:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def reload(self) -> None:
        daemon = self.daemon
        daemon.notifier.send("RELOADING=1", "STATUS=reloading the configuration")
        try:
            if daemon.load_config is None:
                raise ConfigError("no configuration to reload from")
            # In a thread that cannot hold up a stop: the file could be a FIFO, or on a hung network mount.
            new = await daemon.wait_unless_stopped(in_daemon_thread(daemon.load_config))
            await self._apply(new)
        except Stopped:
            log.info("reload abandoned: stopping")
        except (ConfigError, StartupError, StsError) as error:
            self._rejected(str(error))
            log.error("reload failed, still running the previous configuration: %s", error,
                      extra={"event": "reload", "outcome": "failure"})
        except Exception as error:  # a bug must not end a daemon that was serving fine
            self._rejected("internal error")
            log.error("reload failed (internal error %s), still running the previous configuration",
                      type(error).__name__, exc_info=log.isEnabledFor(logging.DEBUG),
                      extra={"event": "reload", "outcome": "failure"})
        else:
            daemon.reload_rejected = None
            log.info("reloaded: %s", daemon.status(), extra={"event": "reload", "outcome": "success"})
        finally:
            daemon.notifier.send("READY=1", f"STATUS={daemon.status()}")

    def _rejected(self, reason: str) -> None:
        self.daemon.reload_rejected = f"last reload rejected at {format_time(self.daemon.clock.time())}: {reason}"

    async def _apply(self, new: ServeConfig) -> None:
        """Moves to the new configuration, or raises and leaves everything as it was."""
        daemon = self.daemon
        assert daemon.refresher is not None and daemon.session is not None
        plan = plan_reload(daemon.config, [Bound(listener.role, listener.port) for listener in daemon.listeners],
                           new, daemon.session.region_name, daemon.refresher.running)
        for name in plan.restart_only:
            log.warning("%s changed: that takes a restart; keeping %s", name, getattr(plan.config, name))
        async with contextlib.AsyncExitStack() as undo:
            if plan.config.sts_timeout != daemon.config.sts_timeout:  # the new roles' first calls use it too
                undo.callback(setattr, daemon, "assumer", daemon.assumer)
                daemon.assumer = AssumeRoleClient(daemon.session, daemon.clock.time, timeout=plan.config.sts_timeout)
            opened = {}
            for role in plan.open:
                opened[role.name] = listener = daemon.bind(role)
                undo.callback(listener.sock.close)
            tokens = self._tokens(plan, undo)
            for spec in plan.start:
                daemon.refresher.start(spec)
                undo.push_async_callback(daemon.refresher.stop, spec)
            try:
                ready = asyncio.wait_for(daemon.all_ready(plan.start), RELOAD_PREFETCH_TIMEOUT)
                await daemon.wait_unless_stopped(ready)
            except TimeoutError:
                raise StartupError(f"the new roles were not ready within {RELOAD_PREFETCH_TIMEOUT:.0f} s") from None
            undo.pop_all()  # commit: nothing below can fail for a reason the old configuration would not share
        await self._commit(plan, opened, tokens)

    def _tokens(self, plan: ReloadPlan, undo: contextlib.AsyncExitStack) -> dict[str, tuple[str, str]]:
        """The new configuration's token files; the ones this reload creates go again if it fails."""
        if not plan.config.container_credentials:
            return {}
        known = {listener.token_file for listener in self.daemon.listeners}
        tokens = self.daemon.container_tokens(plan.config)
        for path, _token in tokens.values():
            if path not in known:
                undo.callback(_remove_if_exists, path)
        return tokens

    async def _commit(self, plan: ReloadPlan, opened: dict[str, Listener], tokens: dict[str, tuple[str, str]]) -> None:
        daemon = self.daemon
        assert daemon.refresher is not None
        daemon.config = plan.config
        by_port = {listener.port: listener for listener in daemon.listeners}
        specs = dict(plan.specs)
        kept = {role.name: by_port[port] for port, role in plan.keep}
        listeners = []
        for role in plan.config.roles:
            listener = kept.get(role.name) or opened[role.name]
            listener.role, listener.spec = role, specs[role.name]
            listener.token_file, listener.token = tokens.get(role.name, (None, None))
            if role.name in kept:
                daemon.install_routes(listener)  # in place: the socket and its connections stay
            else:
                await daemon.serve(listener)
            listeners.append(listener)
        for port in plan.close:
            listener = by_port[port]
            log.info("no longer serving %s on %s", listener.role.role_arn, listener.url)
            await listener.close()
        daemon.listeners = listeners
        if daemon.transparent is not None:  # transparent mode: who gets which role may have changed
            daemon.transparent.route(plan.config, listeners, daemon.refresher.states)
        for spec in plan.stop:
            await daemon.refresher.stop(spec)
        set_level(plan.config.log_level)


def _remove_if_exists(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
