"""A client of a running daemon, in the standard library only: the IMDSv2 sequence every SDK performs (token
PUT, role list, credentials) and the container-credentials GET. The commands that use it (healthcheck,
credential-process) run once per probe or per client start, where importing aiohttp or boto3 would cost more
than the requests themselves.

Errors are EndpointError with one readable line. It never holds a credential, the IMDSv2 token or the
container token: only addresses, statuses and the daemon's own error codes and messages.
"""

from __future__ import annotations

import calendar
import json
import time
import urllib.error
import urllib.request
from typing import Any

TIMEOUT = 2.0  # seconds per request: the daemon answers from memory, so a slow answer means a sick daemon
CREDENTIAL_KEYS = ("AccessKeyId", "SecretAccessKey", "Token", "Expiration")


class EndpointError(Exception):
    """The daemon could not be asked, or did not answer with valid credentials."""


class NotListening(EndpointError):
    """Nothing listens at the address (connection refused): no daemon runs there."""


class NoCredentials(EndpointError):
    """The daemon answered, but has no valid credentials to serve (STS refuses it, or is unreachable)."""


def _call(url: str, method: str, headers: dict[str, str] | None) -> str:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    # No proxy: the daemon is on this host, whatever HTTP_PROXY says (a proxy would also see the tokens).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=TIMEOUT) as response:
        return response.read().decode()


def _describe(error: Exception, url: str) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"{url} answered HTTP {error.code}{_error_message(error)}"
    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, Exception) else error
    if isinstance(error, TimeoutError):
        return f"{url} did not answer within {TIMEOUT:g} s"
    if isinstance(error, ConnectionRefusedError):
        return f"cannot connect to {url}: connection refused (is the daemon running there?)"
    if isinstance(error, OSError):
        return f"cannot reach {url}: {error.strerror or error}"
    return f"{url} did not answer as the daemon does: {error}"


def _error_message(error: urllib.error.HTTPError) -> str:
    """The daemon's error documents carry code and message (never a credential): worth showing."""
    try:
        document = json.loads(error.read(4096) or b"{}")
    except (ValueError, OSError):
        return ""
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        return f": {document.get('code')}: {document['message']}"
    return ""


def _ask(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> str:
    try:
        return _call(url, method, headers)
    except (OSError, ValueError) as error:  # URLError/HTTPError are OSErrors; ValueError: not UTF-8, bad URL
        raise _failure(error, url) from None


def _failure(error: Exception, url: str) -> EndpointError:
    kind = EndpointError
    if isinstance(getattr(error, "reason", error), ConnectionRefusedError):  # urllib wraps it in a URLError
        kind = NotListening
    elif isinstance(error, urllib.error.HTTPError) and error.code == 503:
        kind = NoCredentials  # the container endpoint's answer when nothing valid is cached
    return kind(_describe(error, url))


def _json(text: str, url: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise EndpointError(f"{url} did not answer with a JSON object")
    return document


def imds_credentials(endpoint: str, role: str | None = None) -> tuple[str, dict[str, Any]]:
    """(role name, credentials document) from an IMDS endpoint, asked exactly as an SDK asks. With role, that
    role must be the one the endpoint serves."""
    base = endpoint.rstrip("/")
    token = _ask(base + "/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    headers = {"X-aws-ec2-metadata-token": token}
    listing = base + "/latest/meta-data/iam/security-credentials/"
    served = _ask(listing, headers=headers).split()
    if not served:
        raise EndpointError(f"{listing} lists no role")
    if role is not None and role not in served:
        raise EndpointError(f"{endpoint} serves {', '.join(served)}, not {role}")
    name = role or served[0]
    url = listing + name
    document = _json(_ask(url, headers=headers), url)
    if document.get("Code") != "Success":
        raise NoCredentials(f"{endpoint} has no valid credentials for {name}: {document.get('Code')}: "
                            f"{document.get('Message')}")
    return name, _checked(document, url)


def container_credentials(url: str, token: str) -> dict[str, Any]:
    """The credentials document from a container-credentials URL, with its token as Authorization."""
    return _checked(_json(_ask(url, headers={"Authorization": token}), url), url)


def _checked(document: dict[str, Any], url: str) -> dict[str, Any]:
    """The document, if it has credentials that have not expired (names the missing field, never a value)."""
    for key in CREDENTIAL_KEYS:
        if not isinstance(document.get(key), str) or not document[key]:
            raise EndpointError(f"{url} answered credentials without {key}")
    try:
        expires = calendar.timegm(time.strptime(document["Expiration"], "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        raise EndpointError(f"{url} answered an Expiration that is not a UTC time") from None
    if expires <= time.time():
        raise EndpointError(f"{url} served credentials that expired at {document['Expiration']}")
    return document
