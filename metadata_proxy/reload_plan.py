"""A reload as a pure plan: the running configuration and the new one in, what to change out.

Nothing here touches a socket, a file or STS, so every case is a unit test. The daemon (daemon.py) carries the
plan out, and undoes what it did if the new roles cannot be assumed.

Listeners are matched by address, not by role: a role that names a port some listener already holds takes
that listener over (its socket and open connections stay), so renaming a role, changing its ARN or swapping two
roles' ports never binds a port that is still held. A role with port 0 keeps the listener its name had.
Every setting is either applied or, if it takes a restart, explicitly kept at its running value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from metadata_proxy.config import RoleConfig, ServeConfig
from metadata_proxy.model import RoleSpec, region_of

# Settings a running daemon cannot change: they shape sockets, logging handlers, the event loop or the
# interception rules (which an unprivileged daemon cannot rewrite).
RESTART_ONLY = ("host", "hop_limit", "admin_port", "log_format", "event_loop", "intercept_users", "intercept_groups",
                "intercept_port")


@dataclass(frozen=True)
class Bound:
    """A running listener: the role it serves and the port it holds."""

    role: RoleConfig
    port: int


@dataclass(frozen=True)
class ReloadPlan:
    config: ServeConfig  # the new configuration, with RESTART_ONLY settings kept at their running values
    restart_only: tuple[str, ...]  # settings the new file changes that keep their running value until a restart
    keep: tuple[tuple[int, RoleConfig], ...]  # (port of a running listener, the role it serves from now on)
    open: tuple[RoleConfig, ...]  # roles that need a newly bound listener
    close: tuple[int, ...]  # ports of running listeners that no role keeps
    specs: tuple[tuple[str, RoleSpec], ...]  # (role name, its AssumeRole inputs) for every new role
    start: frozenset[RoleSpec]  # AssumeRole inputs to start refreshing (and wait for before committing)
    stop: frozenset[RoleSpec]  # AssumeRole inputs no role needs any more


def plan_reload(running: ServeConfig, listeners: Iterable[Bound], new: ServeConfig, source_region: str | None,
                refreshing: frozenset[RoleSpec]) -> ReloadPlan:
    changed = tuple(name for name in RESTART_ONLY if getattr(new, name) != getattr(running, name))
    config = replace(new, **{name: getattr(running, name) for name in changed})

    bound = list(listeners)
    by_port = {listener.port: listener for listener in bound}
    by_name = {listener.role.name: listener for listener in bound}
    claimed: set[int] = {role.port for role in config.roles if role.port in by_port}
    keep: list[tuple[int, RoleConfig]] = []
    opened: list[RoleConfig] = []
    for role in config.roles:
        if role.port in by_port:
            keep.append((role.port, role))
        elif role.port == 0 and role.name in by_name and by_name[role.name].port not in claimed:
            port = by_name[role.name].port
            claimed.add(port)
            keep.append((port, role))
        else:
            opened.append(role)
    close = tuple(listener.port for listener in bound if listener.port not in claimed)

    region = region_of(config.region, source_region)
    specs = tuple((role.name, RoleSpec.of(role, config.sts_endpoint_url, region)) for role in config.roles)
    wanted = frozenset(spec for _name, spec in specs)
    return ReloadPlan(config=config, restart_only=changed, keep=tuple(keep), open=tuple(opened), close=close,
                      specs=specs, start=wanted - refreshing, stop=refreshing - wanted)
