"""Which credential sources would win over the local endpoint for an AWS client started by this user.

The instance metadata provider is the last step of every SDK's default chain. Anything earlier that holds
credentials (or names a profile) takes precedence, so that user's clients never ask the endpoint: keys in the
environment, AWS_PROFILE, web identity, the container-credentials variables, and the default profile of the
shared credentials and config files. The files are read with botocore's own parser and found where botocore
looks for them (AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE, else ~/.aws/).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import botocore.configloader
import botocore.exceptions

# Keys of a profile that make it a credential source of its own, before the endpoint in the chain.
PROFILE_SOURCES = ("aws_access_key_id", "credential_process", "role_arn", "web_identity_token_file",
                   "sso_session", "sso_start_url", "sso_account_id")


@dataclass(frozen=True)
class Winner:
    source: str  # what was found, e.g. "AWS_PROFILE=dev in the environment"
    remove: str  # how to remove it


def _environment(environ: Mapping[str, str], is_endpoint: Callable[[str], bool]) -> list[Winner]:
    found = []
    keys = [name for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
            if environ.get(name)]
    if "AWS_ACCESS_KEY_ID" in keys:
        found.append(Winner(f"{', '.join(keys)} in the environment", f"unset {' '.join(keys)}"))
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        if environ.get(name):
            found.append(Winner(f"{name}={environ[name]} in the environment", f"unset {name}"))
    if environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        names = [n for n in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME") if environ.get(n)]
        found.append(Winner("web identity (AWS_WEB_IDENTITY_TOKEN_FILE) in the environment",
                            f"unset {' '.join(names)}"))
    for name in ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        value = environ.get(name)
        if value and not (name.endswith("FULL_URI") and is_endpoint(value)):
            found.append(Winner(f"{name}={value} in the environment (the container-credentials provider)",
                                f"unset {name}"))
    return found


def _default_profile(path: Path, config: bool) -> dict[str, str]:
    """The [default] section of a credentials or config file; {} when the file is missing or unreadable."""
    if not path.is_file():
        return {}
    try:
        if config:
            return botocore.configloader.load_config(str(path)).get("profiles", {}).get("default", {})
        return botocore.configloader.raw_config_parse(str(path)).get("default", {})
    except (botocore.exceptions.ConfigParseError, OSError, UnicodeDecodeError):
        return {}


def _files(environ: Mapping[str, str]) -> list[Winner]:
    home = Path(environ.get("HOME") or os.path.expanduser("~"))
    credentials = Path(os.path.expanduser(environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials"))
    config = Path(os.path.expanduser(environ.get("AWS_CONFIG_FILE") or home / ".aws" / "config"))
    found = []
    if "aws_access_key_id" in _default_profile(credentials, config=False):
        found.append(Winner(f"the [default] profile in {credentials} has keys",
                            f"remove the [default] section from {credentials} (or rename it to a named profile)"))
    keys = [key for key in PROFILE_SOURCES if key in _default_profile(config, config=True)]
    if keys:
        found.append(Winner(f"the [default] profile in {config} sets {', '.join(keys)}",
                            f"remove {', '.join(keys)} from [default] in {config} (or move them to a named profile)"))
    return found


def winning_sources(environ: Mapping[str, str], is_endpoint: Callable[[str], bool]) -> list[Winner]:
    """Every source that a client run with environ would use before the endpoint, in the chain's order.
    is_endpoint(url) says whether a container-credentials URL is this daemon's own (then it is no rival)."""
    return _environment(environ, is_endpoint) + _files(environ)
