"""`metadata-proxy credential-process`: a running daemon's credentials, printed as the JSON that a
`credential_process` line in ~/.aws/config must print. For tools that only read profiles, and for users
whose default profile would otherwise win over the endpoint in the SDK's chain.

Where it asks:
- with --url: IMDS at that address;
- else the daemon's own settings (its config file and METADATA_PROXY_* variables, read as `serve` reads them)
  name the role's listener: its container endpoint when container credentials are on and this user can read
  the role's token file, else IMDS on the same listener (which serves both);
- without any settings: IMDS at the default address.

It runs once per client start, so it loads neither boto3 nor aiohttp (imds_client.py is the standard library).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from metadata_proxy.addresses import container_path, endpoint_url, reachable_host
from metadata_proxy.config import RoleConfig, ServeConfig, load_serve_config
from metadata_proxy.errors import ConfigError
from metadata_proxy.imds_client import container_credentials, imds_credentials
from metadata_proxy.options import DEFAULT_CONFIG, ENV_PREFIX
from metadata_proxy.tokenfile import default_token_dir


@dataclass(frozen=True)
class Target:
    """Where to ask: IMDS at endpoint (for role, or whichever it serves), or the container URL with a token."""

    endpoint: str
    role: str | None = None
    container_url: str | None = None
    token_file: str | None = None


def resolve(url: str | None, role: str | None, config_path: str | None, environ: Mapping[str, str],
            default_endpoint: str) -> Target:
    """The target for the command's flags; ConfigError for settings that name no such role (or several)."""
    if url is not None:
        return Target(url, role)
    config = daemon_settings(config_path, environ)
    if config is None:
        return Target(default_endpoint, role)
    served = pick_role(config, role)
    if served.port == 0:
        raise ConfigError(f"role {served.name} is served on a port chosen at start (port 0): give --url")
    endpoint = endpoint_url(reachable_host(config.host), served.port)
    if not config.container_credentials:
        return Target(endpoint, served.name)
    token_file = served.container_token_file or os.path.join(default_token_dir(environ), f"{served.name}.token")
    return Target(endpoint, served.name, endpoint.rstrip("/") + container_path(served.name), token_file)


def daemon_settings(config_path: str | None, environ: Mapping[str, str]) -> ServeConfig | None:
    """The daemon's settings, if there are any to read (a config file, or the role in the environment)."""
    if not (config_path or environ.get(ENV_PREFIX + "CONFIG") or environ.get(ENV_PREFIX + "ROLE_ARN")
            or os.path.exists(DEFAULT_CONFIG)):
        return None
    return load_serve_config(argparse.Namespace(config=config_path), environ)


def pick_role(config: ServeConfig, name: str | None) -> RoleConfig:
    names = [role.name for role in config.roles]
    if name is None:
        if len(config.roles) > 1:
            raise ConfigError(f"the daemon serves several roles ({', '.join(names)}): pick one with --role")
        return config.roles[0]
    for role in config.roles:
        if role.name == name:
            return role
    raise ConfigError(f"--role {name}: the daemon's settings name no such role (they name {', '.join(names)})")


def read_token(path: str) -> str | None:
    """The container token, if this user may read it; None sends the request to IMDS instead."""
    try:
        with open(path, encoding="ascii") as file:
            return file.read(4096) or None
    except (OSError, UnicodeDecodeError):  # absent, not ours to read (another user's daemon), or not a token
        return None


def credentials_json(target: Target) -> str:
    """The credential_process document (Version 1); raises imds_client.EndpointError."""
    token = read_token(target.token_file) if target.token_file else None
    if target.container_url and token:
        document = container_credentials(target.container_url, token)
    else:
        _, document = imds_credentials(target.endpoint, target.role)
    return json.dumps({
        "Version": 1,
        "AccessKeyId": document["AccessKeyId"],
        "SecretAccessKey": document["SecretAccessKey"],
        "SessionToken": document["Token"],
        "Expiration": document["Expiration"],
    })
