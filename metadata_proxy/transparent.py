"""Transparent mode in the daemon: the endpoint that intercepted connections land on, and its rules.

The endpoint listens on 127.0.0.1 and ::1 at intercept_port, answers as IMDS does at 169.254.169.254 (that
Host is accepted here), serves each local user the role mapped to it (routes.ByUser) and passes the
instance's own metadata through (passthrough.py). The sockets are bound at start but accept only once the
roles are ready, so until then an intercepted client is refused, never sent on to the real IMDS.

A daemon holding CAP_NET_ADMIN (run as root) writes the rules itself at start, exempting its own uid, and
removes them when it stops. Without it (the systemd unit), `metadata-proxy intercept install` and `remove`
run as privileged steps around the service (intercept.py).
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
from collections.abc import Iterable, Mapping

from metadata_proxy.addresses import endpoint_url
from metadata_proxy.config import ServeConfig
from metadata_proxy.errors import ConfigError, StartupError
from metadata_proxy.gate import HostCheck
from metadata_proxy.intercept import IMDS_V4, IMDS_V6, apply, may_write_rules, removal, ruleset
from metadata_proxy.ledger import Ledger
from metadata_proxy.listeners import Endpoint, Listener, bind_socket
from metadata_proxy.model import RoleSpec
from metadata_proxy.passthrough import RealImds
from metadata_proxy.refresher import RoleState
from metadata_proxy.routes import Shared, transparent_routes
from metadata_proxy.threads import in_daemon_thread

log = logging.getLogger("metadata_proxy")


def group_members(gid: int) -> set[int]:
    """Users whose primary group is gid, and the group's listed members, as uids (read when routes are built)."""
    members = {user.pw_uid for user in pwd.getpwall() if user.pw_gid == gid}
    try:
        names = grp.getgrgid(gid).gr_mem
    except KeyError:
        return members
    for name in names:
        with contextlib.suppress(KeyError):  # a member name with no account
            members.add(pwd.getpwnam(name).pw_uid)
    return members


class TransparentEndpoint:
    def __init__(self, config: ServeConfig, shared: Shared) -> None:
        uid, gid = os.geteuid(), os.getegid()
        if uid in config.intercept_users or gid in config.intercept_groups:
            raise ConfigError(f"metadata-proxy runs as uid {uid} gid {gid}, which the interception rules would "
                              "redirect: it needs the real IMDS for its own identity; run it as another user")
        self._config = config
        self._shared = shared
        port = config.intercept_port
        self.endpoints = [Endpoint(bind_socket("127.0.0.1", port), endpoint_url("127.0.0.1", port))]
        try:
            self.endpoints.append(Endpoint(bind_socket("::1", port), endpoint_url("::1", port)))
        except StartupError as error:  # no IPv6 here: its rule then leads to a closed port (refused)
            log.warning("no transparent endpoint for IPv6: %s", error)
        self.real_imds = RealImds()
        self._rules_written = False

    async def write_rules(self) -> None:
        """Writes the rules if this process may; otherwise a privileged step is expected to have done it."""
        config = self._config
        if not may_write_rules():
            log.info("not writing the interception rules (no CAP_NET_ADMIN): `metadata-proxy intercept install` "
                     "does that for this daemon")
            return
        await in_daemon_thread(apply, ruleset(config.intercept_users, config.intercept_groups,
                                              config.intercept_port, exempt_uid=os.geteuid()))
        self._rules_written = True
        log.info("intercepting TCP to %s:80 and [%s]:80 from uids %s and gids %s", IMDS_V4, IMDS_V6,
                 list(config.intercept_users) or "-", list(config.intercept_groups) or "-")

    def route(self, config: ServeConfig, listeners: Iterable[Listener], states: Mapping[RoleSpec, RoleState]) -> None:
        """(Re)builds every endpoint's routes for the roles the listeners serve (at start and on reload)."""
        self._config = config
        roles = [(listener.role, listener.spec, states[listener.spec]) for listener in listeners
                 if listener.spec is not None]
        for endpoint in self.endpoints:
            endpoint.allowed = config.allowed_uids
            endpoint.routes = transparent_routes(self._shared, config, roles, self.real_imds, group_members)

    async def start(self, ledger: Ledger) -> None:
        for endpoint in self.endpoints:
            await endpoint.start(HostCheck(str(endpoint.sock.getsockname()[0]), also=(IMDS_V4, IMDS_V6)), ledger)
            log.info("transparent endpoint on %s (answering for %s and [%s])", endpoint.url, IMDS_V4, IMDS_V6)

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.close()
        await self.real_imds.close()
        if self._rules_written:
            await in_daemon_thread(apply, removal())
            log.info("interception rules removed")
