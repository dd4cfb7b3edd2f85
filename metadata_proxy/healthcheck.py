"""`metadata-proxy healthcheck`: asks a running daemon for credentials the way an SDK does (token PUT, role
list, credentials), so "healthy" means "a client would get valid credentials now". Used by the Docker
HEALTHCHECK; exit 0 when healthy, else 1 with one line saying why."""

from __future__ import annotations

from metadata_proxy.imds_client import EndpointError, imds_credentials


def check(endpoint: str) -> str | None:
    """None when the endpoint serves valid credentials; otherwise what is wrong."""
    try:
        imds_credentials(endpoint)
    except EndpointError as error:
        return str(error)
    return None
