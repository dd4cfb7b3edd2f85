"""Addresses and URLs of the daemon's endpoints. No dependencies beyond the standard library, so that the
light commands (healthcheck, credential-process) can import it without loading aiohttp or boto3."""

from __future__ import annotations

import ipaddress

DEFAULT_PORT = 9254
DEFAULT_INTERCEPT_PORT = 9280  # the transparent endpoint, where the interception rules send port 80
CONTAINER_PATH_PREFIX = "/v1/credentials/"


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


def loopback_for(host: str) -> str:
    """The loopback address of host's family (the admin listener stays on loopback whatever --host says)."""
    return "::1" if ipaddress.ip_address(host).version == 6 else "127.0.0.1"


def container_path(name: str) -> str:
    return CONTAINER_PATH_PREFIX + name
