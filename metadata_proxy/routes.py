"""Route assembly: what one listener serves for one role, from the pieces the daemon holds.

A role's listener answers IMDS (imds.py) and, when container credentials are on, the container path
(container.py) with the role's token. Routes are plain handlers built from immutable inputs, so a reload
builds new ones and swaps them in (listeners.py) without touching sockets.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from metadata_proxy.addresses import container_path
from metadata_proxy.config import RoleConfig, ServeConfig
from metadata_proxy.container import ContainerRoutes
from metadata_proxy.gate import Handler
from metadata_proxy.imds import ImdsRoutes, InstanceIdentity, normalize_path
from metadata_proxy.metrics import Metrics
from metadata_proxy.model import RoleSpec
from metadata_proxy.refresher import RoleState
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


def role_routes(shared: Shared, config: ServeConfig, role: RoleConfig, spec: RoleSpec, state: RoleState,
                container_token: str | None) -> Handler:
    identity = InstanceIdentity(
        instance_id=config.instance_id or default_instance_id(), region=spec.region,
        availability_zone=config.availability_zone or f"{spec.region}a", account_id=spec.account_id,
        pending_time=shared.started_at)
    routes: Handler = ImdsRoutes(spec, state, shared.store, shared.tokens, identity, shared.metrics,
                                 require_token=not config.allow_imdsv1, now=shared.now)
    if container_token is not None:
        container = ContainerRoutes(spec, state, shared.store, container_token, shared.now)
        routes = with_container_route(container_path(role.name), container, routes)
    return routes


def with_container_route(path: str, container: Handler, imds: Handler) -> Handler:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if normalize_path(request.raw_path) == path:
            return await container(request)
        return await imds(request)

    return handle
