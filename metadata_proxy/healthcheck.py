"""`metadata-proxy healthcheck`: asks a running daemon for credentials the way an SDK does (token PUT, role
list, credentials), so "healthy" means "a client would get valid credentials now". Used by the Docker
HEALTHCHECK; exit 0 when healthy, else 1 with one line saying why."""

from __future__ import annotations

import calendar
import json
import time
import urllib.error
import urllib.request

TIMEOUT = 2.0


def _call(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> str:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    # No proxy: this is a loopback check, whatever HTTP_PROXY says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=TIMEOUT) as response:
        return response.read().decode()


def fetch_credentials(endpoint: str) -> dict:
    """The credentials document, fetched as an SDK does (token PUT, role list, role); raises OSError/ValueError."""
    base = endpoint.rstrip("/")
    token = _call(base + "/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    headers = {"X-aws-ec2-metadata-token": token}
    role = _call(base + "/latest/meta-data/iam/security-credentials/", headers=headers).strip()
    return json.loads(_call(f"{base}/latest/meta-data/iam/security-credentials/{role}", headers=headers))


def check(endpoint: str) -> str | None:
    """None when the endpoint serves valid credentials; otherwise what is wrong."""
    try:
        document = fetch_credentials(endpoint)
    except (OSError, ValueError) as error:  # URLError, HTTPError, timeouts and bad JSON
        return f"{endpoint} did not answer as IMDS: {error}"
    if document.get("Code") != "Success":
        return f"{endpoint} has no valid credentials: {document.get('Code')}: {document.get('Message')}"
    expires = calendar.timegm(time.strptime(document["Expiration"], "%Y-%m-%dT%H:%M:%SZ"))
    if expires <= time.time():
        return f"{endpoint} served credentials that expired at {document['Expiration']}"
    return None
