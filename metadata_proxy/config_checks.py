"""Checks across settings, made once every option has parsed: what no single option can say is wrong alone.

Each raises ConfigError with the one line the user sees (exit 2 at start; a reload keeps the running
configuration).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from metadata_proxy.errors import ConfigError

if TYPE_CHECKING:  # config.py calls these once it has built a ServeConfig
    from metadata_proxy.config import ServeConfig


def check_config(config: ServeConfig) -> None:
    check_roles(config)
    check_interception(config)
    check_bind_address(config)


def check_roles(config: ServeConfig) -> None:
    seen_names: dict[str, int] = {}
    seen_ports: dict[int, int] = {}
    if config.admin_port is not None:
        seen_ports[config.admin_port] = 0
    if config.intercepting:
        seen_ports[config.intercept_port] = -1
    for index, role in enumerate(config.roles, 1):
        if role.name in seen_names:
            raise ConfigError(f"role[{index}] and role[{seen_names[role.name]}] are both named {role.name!r}: "
                              "give each [[role]] its own name")
        seen_names[role.name] = index
        if role.port and role.port in seen_ports:
            other = {0: "the admin listener", -1: "the transparent endpoint (intercept_port)"}.get(
                seen_ports[role.port], f"role[{seen_ports[role.port]}]")
            raise ConfigError(f"role[{index}] and {other} both use port {role.port}: give each its own port")
        seen_ports[role.port] = index


def check_interception(config: ServeConfig) -> None:
    """A uid is served one role on the transparent endpoint: the one listing it, else the one role without
    users or groups (if any)."""
    if config.intercepting and config.admin_port == config.intercept_port:
        raise ConfigError(f"the admin listener and the transparent endpoint both use port {config.intercept_port}")
    mapped = [role for role in config.roles if role.mapped]
    if mapped and not config.intercepting:
        raise ConfigError(f"role {mapped[0].name!r} names users or groups, which choose a role on the transparent "
                          "endpoint: set intercept_users or intercept_groups too")
    if config.intercepting and len(config.roles) - len(mapped) > 1:
        raise ConfigError("with intercept_users or intercept_groups, at most one [[role]] may be without users "
                          "and groups (the role of every other user)")
    for kind in ("users", "groups"):
        owner: dict[int, str] = {}
        for role in config.roles:
            for number in getattr(role, kind):
                if owner.setdefault(number, role.name) != role.name:
                    raise ConfigError(f"{kind[:-1]} {number} is listed in the {kind} of both {owner[number]!r} "
                                      f"and {role.name!r}: each gets one role")


def check_bind_address(config: ServeConfig) -> None:
    if not ipaddress.ip_address(config.host).is_loopback and not config.allow_non_loopback:
        raise ConfigError(
            f"--host {config.host} is not a loopback address; every host that can reach it could take the "
            "role's credentials. Pass --allow-non-loopback if that is intended")
