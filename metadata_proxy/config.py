"""Settings of `metadata-proxy serve`: one table of options, read from flags and the environment.

Every option is declared once in OPTIONS; the argparse flags and the `METADATA_PROXY_<NAME>` variables are
generated from it, so a flag and its variable can never drift apart. Values are parsed and validated here,
once, and a bad one becomes a ConfigError naming the flag or variable: the CLI prints it as one line and
exits 2, before anything is bound or called.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "METADATA_PROXY_"
DEFAULT_PORT = 9254
DEFAULT_DURATION = 3600


class ConfigError(ValueError):
    """A setting the daemon cannot start with; the message names the setting and says what is accepted."""


@dataclass(frozen=True)
class ServeConfig:
    role_arn: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    role_session_name: str = ""
    external_id: str | None = None
    duration_seconds: int = DEFAULT_DURATION
    region: str | None = None
    sts_endpoint_url: str | None = None
    allow_imdsv1: bool = False
    allow_non_loopback: bool = False
    instance_id: str | None = None
    availability_zone: str | None = None
    log_level: str = "info"


# --- value parsers: each takes the raw string and returns the value or raises ValueError(reason) ---

ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$")
SESSION_NAME_RE = re.compile(r"^[\w+=,.@-]{2,64}$")
EXTERNAL_ID_RE = re.compile(r"^[\w+=,.@:/-]{2,1224}$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
INSTANCE_ID_RE = re.compile(r"^i-[0-9a-f]{8,17}$")
LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_role_arn(value: str) -> str:
    if not ROLE_ARN_RE.match(value):
        raise ValueError("expected an IAM role ARN like arn:aws:iam::123456789012:role/role-01")
    return value


def parse_host(value: str) -> str:
    if value == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        raise ValueError("expected an IP address to bind, e.g. 127.0.0.1 or ::1") from None


def parse_port(value: str) -> int:
    port = parse_int(value)
    if not 0 <= port <= 65535:
        raise ValueError("expected a TCP port from 1 to 65535 (0 picks a free one)")
    return port


def parse_int(value: str) -> int:
    try:
        return int(value, 10)
    except ValueError:
        raise ValueError("expected a whole number") from None


def parse_duration(value: str) -> int:
    seconds = parse_int(value)
    if not 900 <= seconds <= 43200:
        raise ValueError("expected seconds from 900 to 43200 (STS's limits; role chaining caps it at 3600)")
    return seconds


def parse_session_name(value: str) -> str:
    if not SESSION_NAME_RE.match(value):
        raise ValueError("expected 2 to 64 characters from letters, digits and +=,.@_-")
    return value


def parse_external_id(value: str) -> str:
    if not EXTERNAL_ID_RE.match(value):
        raise ValueError("expected 2 to 1224 characters from letters, digits and +=,.@:/_-")
    return value


def parse_region(value: str) -> str:
    if not REGION_RE.match(value):
        raise ValueError("expected an AWS region name like us-east-1")
    return value


def parse_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL")
    return value


def parse_instance_id(value: str) -> str:
    if not INSTANCE_ID_RE.match(value):
        raise ValueError("expected an instance id like i-0123456789abcdef0")
    return value


def parse_availability_zone(value: str) -> str:
    if not re.match(r"^[a-z]{2}(-[a-z]+)+-\d+[a-z]$", value):
        raise ValueError("expected an availability zone like us-east-1a")
    return value


def parse_log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return value.lower()


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


@dataclass(frozen=True)
class Option:
    name: str  # the flag without dashes; also names the field (with _) and the env variable
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None  # None: a boolean switch

    @property
    def field(self) -> str:
        return self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()


OPTIONS: tuple[Option, ...] = (
    Option("role-arn", parse_role_arn, "ARN of the role to assume and serve (required)", "ARN"),
    Option("host", parse_host, "address to listen on (default 127.0.0.1)", "ADDR"),
    Option("port", parse_port, f"TCP port to listen on (default {DEFAULT_PORT}; 0 picks a free one)", "PORT"),
    Option("role-session-name", parse_session_name,
           "session name for AssumeRole (default metadata-proxy-<hostname>), shown in CloudTrail", "NAME"),
    Option("external-id", parse_external_id, "ExternalId that role's trust policy requires", "ID"),
    Option("duration-seconds", parse_duration,
           f"session length to ask STS for, 900..43200 (default {DEFAULT_DURATION})", "SECONDS"),
    Option("region", parse_region,
           "region for STS and the instance identity (default: the source profile's, else us-east-1)", "REGION"),
    Option("sts-endpoint-url", parse_url, "STS endpoint, e.g. a VPC endpoint (default: the region's)", "URL"),
    Option("allow-imdsv1", parse_bool, "serve GETs without an IMDSv2 token (default: tokens required)"),
    Option("allow-non-loopback", parse_bool,
           "allow --host to be a non-loopback address (anyone who reaches it gets the role)"),
    Option("instance-id", parse_instance_id, "instance id to report (default derived from the host name)", "ID"),
    Option("availability-zone", parse_availability_zone,
           "availability zone to report (default <region>a)", "AZ"),
    Option("log-level", parse_log_level, "debug, info, warning or error (default info)", "LEVEL"),
)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares every option as a flag whose default is None, so 'not given' can fall back to the env."""
    for option in OPTIONS:
        help_text = f"{option.help} [env {option.env}]"
        if option.metavar is None:
            parser.add_argument(option.flag, dest=option.field, action="store_const", const="true",
                                default=None, help=help_text)
        else:
            parser.add_argument(option.flag, dest=option.field, metavar=option.metavar, default=None,
                                help=help_text)


def build_serve_config(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeConfig:
    """Merges flags over environment over defaults, parsing each value once; raises ConfigError."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = getattr(args, option.field, None)
        source = option.flag
        if raw is None and option.env in environ:
            raw, source = environ[option.env], option.env
        if raw is None:
            continue
        try:
            values[option.field] = option.parse(raw)
        except ValueError as error:
            raise ConfigError(f"{source}: {error} (got {raw!r})") from None
    if "role_arn" not in values:
        raise ConfigError("--role-arn is required (or set METADATA_PROXY_ROLE_ARN)")
    values.setdefault("role_session_name", default_session_name())
    config = ServeConfig(**values)
    check_bind_address(config)
    return config


def check_bind_address(config: ServeConfig) -> None:
    if not ipaddress.ip_address(config.host).is_loopback and not config.allow_non_loopback:
        raise ConfigError(
            f"--host {config.host} is not a loopback address; every host that can reach it could take the "
            "role's credentials. Pass --allow-non-loopback if that is intended")


def default_session_name(hostname: str | None = None) -> str:
    """`metadata-proxy-<host>` so CloudTrail shows which machine acted, cut to STS's charset and 64 chars."""
    host = re.sub(r"[^\w+=,.@-]", "-", hostname or socket.gethostname()) or "host"
    return ("metadata-proxy-" + host)[:64]

