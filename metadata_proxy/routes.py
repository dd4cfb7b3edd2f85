"""Route assembly: what each listener serves, from the pieces the daemon holds.

A role's listener answers IMDS (imds.py) for that role and, when container credentials are on, the container
path (container.py) with the role's token. The transparent endpoint serves every role, each to the local
users mapped to it (ByUser), and passes the instance's own metadata through. Routes are plain handlers built
from immutable inputs, so a reload builds new ones and swaps them in (listeners.py) without touching sockets.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web

from metadata_proxy.addresses import container_path
from metadata_proxy.config import RoleConfig, ServeConfig
from metadata_proxy.container import ContainerRoutes
from metadata_proxy.gate import Handler, Routes
from metadata_proxy.imds import (
    Fallback,
    ImdsProtocol,
    ImdsRoutes,
    InstanceIdentity,
    normalize_path,
    not_found,
)
from metadata_proxy.metrics import Metrics
from metadata_proxy.model import RoleSpec
from metadata_proxy.refresher import RoleState
from metadata_proxy.request import GatedRequest
from metadata_proxy.store import CredentialStore
from metadata_proxy.tokens import TokenAuthority


def default_instance_id() -> str:
    """Stable per host, so tools that key on the instance id see the same one across restarts."""
    return "i-" + hashlib.sha256(socket.gethostname().encode()).hexdigest()[:17]


@dataclass(frozen=True)
class Shared:
    """What every listener's routes share: the store, the token authority, the metrics, the clock."""

    store: CredentialStore
    tokens: TokenAuthority
    metrics: Metrics
    now: Callable[[], float]
    started_at: float


def imds_routes(shared: Shared, config: ServeConfig, spec: RoleSpec, state: RoleState,
                fallback: Fallback | None = None) -> ImdsRoutes:
    """One role's IMDS; with a fallback (the transparent endpoint), only its iam/ paths are answered here."""
    identity = InstanceIdentity(
        instance_id=config.instance_id or default_instance_id(), region=spec.region,
        availability_zone=config.availability_zone or f"{spec.region}a", account_id=spec.account_id,
        pending_time=shared.started_at)
    return ImdsRoutes(spec, state, shared.store, shared.tokens, identity, shared.metrics,
                      require_token=not config.allow_imdsv1, now=shared.now, instance_metadata=fallback is None,
                      fallback=fallback or not_found)


def role_routes(shared: Shared, config: ServeConfig, role: RoleConfig, spec: RoleSpec, state: RoleState,
                container_token: str | None) -> Routes:
    imds = imds_routes(shared, config, spec, state).answer
    if container_token is None:
        return imds
    container = ContainerRoutes(spec, state, shared.store, container_token)
    return with_container_route(container_path(role.name), container, imds)


def with_container_route(path: str, container: Handler, imds: Routes) -> Routes:
    def answer(request: GatedRequest) -> web.StreamResponse | Awaitable[web.StreamResponse]:
        return container(request) if normalize_path(request.raw_path) == path else imds(request)

    return answer


class ByUser:
    """The transparent endpoint's routes: a connection gets the role mapped to its local uid, the default
    role when its uid is not mapped, and no role (404 under iam/, as IMDS without an instance profile) when
    there is no default or its uid cannot be determined. The map is built with the routes; a request does
    one dict lookup on the connection's uid."""

    def __init__(self, by_uid: Mapping[int, ImdsRoutes], default: ImdsRoutes | None, no_role: Handler) -> None:
        self._by_uid = by_uid
        self._default = default
        self._no_role = no_role

    async def __call__(self, request: GatedRequest) -> web.StreamResponse:
        uid = request.uid
        routes = None if uid is None else self._by_uid.get(uid, self._default)
        if routes is None:
            return await self._no_role(request)
        request.served_role = routes.role_arn  # the audit trail names it, not the endpoint's (it has none)
        return await routes(request)


def transparent_routes(shared: Shared, config: ServeConfig, served: Iterable[tuple[RoleConfig, RoleSpec, RoleState]],
                       passthrough: Fallback, members: Callable[[int], Iterable[int]]) -> ByUser:
    """A role listing a uid in `users` wins over one whose `groups` include it (members(gid) says who)."""
    no_role = ImdsProtocol(shared.tokens, shared.metrics, require_token=not config.allow_imdsv1, fallback=passthrough)
    default: ImdsRoutes | None = None
    by_group: dict[int, ImdsRoutes] = {}
    by_user: dict[int, ImdsRoutes] = {}
    for role, spec, state in served:
        routes = imds_routes(shared, config, spec, state, fallback=passthrough)
        if not role.mapped:
            default = routes
        by_user.update(dict.fromkeys(role.users, routes))
        for gid in role.groups:
            for uid in members(gid):
                by_group.setdefault(uid, routes)
    return ByUser(by_group | by_user, default, no_role)
