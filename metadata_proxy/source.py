"""The daemon's own (source) identity: boto3's default chain, minus any variable that points at the daemon.

On EC2 the chain ends at the instance profile (role-02) from the real IMDS; on a laptop it finds env keys, a
profile or SSO. If the daemon's environment carries the very variables we tell clients to set (a login
shell with the profile.d snippet, a unit with the drop-in), its chain would ask itself for credentials and
never get any (peers.md "self-reference loop"), so those variables are dropped for the daemon's process.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping, MutableMapping
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import botocore.session

SELF_POINTING_CANDIDATES = ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


def _addresses(hostname: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return {ipaddress.ip_address(hostname)}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(hostname, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return set()
    return {ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos}


def points_at(url: str, host: str, port: int) -> bool:
    """Whether url would reach a listener bound to host:port on this machine."""
    try:
        parts = urlsplit(url)
        target_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    if target_port != port or not parts.hostname:
        return False
    bound = ipaddress.ip_address(host)
    for address in _addresses(parts.hostname):
        if address == bound or (address.is_loopback and (bound.is_loopback or bound.is_unspecified)):
            return True
        if bound.is_unspecified and address.version == bound.version:
            return True
    return False


def drop_self_pointing(environ: MutableMapping[str, str], host: str, port: int) -> list[str]:
    """Removes the variables that point at this daemon; returns their names for the log."""
    dropped = [name for name in SELF_POINTING_CANDIDATES
               if name in environ and points_at(environ[name], host, port)]
    for name in dropped:
        del environ[name]
    return dropped


class NoSourceCredentials(Exception):
    """The default chain found nothing usable; the message says what to provide.

    permanent: retrying cannot help (an expired SSO login, a profile that needs an MFA code), as opposed to an
    instance profile that is not there yet while the instance boots."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def source_session() -> boto3.Session:
    """A boto3 session on the default chain whose credentials resolve now (blocking: it may ask the real IMDS).

    Resolving them here, not at the first AssumeRole, turns a source that can never work in a daemon into one
    line at start: an SSO login that has expired, or a profile that would prompt for an MFA code at every
    refresh (botocore's prompt reads a terminal that a service does not have)."""
    core = botocore.session.Session()
    profile = core.profile or "default"
    try:
        scoped = core.get_scoped_config()
        if scoped.get("mfa_serial") and scoped.get("role_arn"):
            raise NoSourceCredentials(
                f"the profile {profile} needs an MFA code (mfa_serial), which nobody can type at each refresh: "
                "give the daemon a profile without MFA, or an instance profile", permanent=True)
        session = boto3.Session(botocore_session=core)
        credentials = session.get_credentials()
        if credentials is not None:
            credentials.get_frozen_credentials()
    except botocore.exceptions.SSOError as error:
        raise NoSourceCredentials(f"the SSO login of the profile {profile} is missing or has expired ({error}): "
                                  f"run `aws sso login --profile {profile}`", permanent=True) from None
    except botocore.exceptions.BotoCoreError as error:  # a named profile that does not exist, a bad config file
        raise NoSourceCredentials(f"cannot load source credentials: {error}") from None
    if credentials is None:
        raise NoSourceCredentials(
            "no source credentials found: run on EC2 with an instance profile, or give the daemon AWS_PROFILE "
            "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    return session


def proxy_hint(environ: Mapping[str, str]) -> str | None:
    """botocore sends IMDS requests through HTTP_PROXY unless NO_PROXY matches (contract §1.2)."""
    proxied = any(environ.get(name) for name in ("HTTP_PROXY", "http_proxy"))
    no_proxy = environ.get("NO_PROXY", "") + "," + environ.get("no_proxy", "")
    if proxied and "127.0.0.1" not in no_proxy:
        return "HTTP_PROXY is set: clients also need NO_PROXY=127.0.0.1,localhost or botocore sends IMDS " \
               "requests to the proxy"
    return None
