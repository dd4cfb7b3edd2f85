"""Settings of `metadata-proxy serve`: one table of options, read from flags, the environment and a TOML file.

Every option is declared once in OPTIONS; its flag (`--role-arn`), variable (`METADATA_PROXY_ROLE_ARN`)
and config key (`role_arn`) are generated from it, so they cannot drift apart. Precedence: flag, then
variable, then config file, then default. Values are parsed and validated here, once, and a bad one is a
ConfigError naming the flag, variable or key: the CLI prints it as one line and exits 2, before anything is
bound or called.

Options are global (one value for the daemon) or per role. A config file may list several roles as
`[[role]]` tables, each served on its own IMDS listener; its top-level role keys are then defaults for every
table. Without `[[role]]` tables the flags, variables and top-level keys describe the one role.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from metadata_proxy.values import (
    ROLE_ARN_RE,
    parse_admin_port,
    parse_availability_zone,
    parse_bool,
    parse_duration,
    parse_event_loop,
    parse_external_id,
    parse_hop_limit,
    parse_host,
    parse_instance_id,
    parse_log_format,
    parse_log_level,
    parse_name,
    parse_path,
    parse_policy_file,
    parse_port,
    parse_region,
    parse_role_arn,
    parse_session_name,
    parse_timeout,
    parse_uid,
    parse_url,
    parse_user,
)

ENV_PREFIX = "METADATA_PROXY_"
DEFAULT_PORT = 9254
DEFAULT_DURATION = 3600
DEFAULT_CONFIG = "/etc/metadata-proxy/config.toml"


class ConfigError(ValueError):
    """A setting the daemon cannot start with; the message names the setting and says what is accepted."""


@dataclass(frozen=True)
class RoleConfig:
    """One served role: what to assume, and where to serve it."""

    role_arn: str
    name: str = ""  # names the role in logs, its container-credentials path and token file; default: the ARN's
    port: int = DEFAULT_PORT
    role_session_name: str = ""
    external_id: str | None = None
    duration_seconds: int = DEFAULT_DURATION
    session_policy: str | None = None  # the policy's JSON text, read from the file named by the option
    container_token_file: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", ROLE_ARN_RE.match(self.role_arn).group(2))  # type: ignore[union-attr]
        if not self.role_session_name:
            object.__setattr__(self, "role_session_name", default_session_name())


@dataclass(frozen=True)
class ServeConfig:
    roles: tuple[RoleConfig, ...]
    host: str = "127.0.0.1"
    region: str | None = None
    sts_endpoint_url: str | None = None
    sts_timeout: float = 10.0
    allow_imdsv1: bool = False
    allow_non_loopback: bool = False
    container_credentials: bool = False
    instance_id: str | None = None
    availability_zone: str | None = None
    allow_uid: tuple[int, ...] = ()
    allow_user: tuple[int, ...] = ()  # resolved to uids when read
    hop_limit: int | None = None
    admin_port: int | None = None
    event_loop: str = "auto"
    log_level: str = "info"
    log_format: str = "text"
    config_path: str | None = None

    @property
    def allowed_uids(self) -> frozenset[int] | None:
        """None when every local user may connect (the default, as on EC2)."""
        uids = frozenset(self.allow_uid) | frozenset(self.allow_user)
        return uids or None


@dataclass(frozen=True)
class Option:
    name: str  # the flag without dashes; the field, config key and env variable are derived from it
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None  # None: a boolean switch
    role: bool = False  # per role (a [[role]] key) rather than global
    kind: type = str  # the TOML type the config key takes
    multiple: bool = False  # repeatable flag, comma-separated variable, TOML list
    is_path: bool = False  # relative paths in the config file are relative to the file

    @property
    def field(self) -> str:
        return self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()

    @property
    def toml_type(self) -> type:
        return bool if self.metavar is None else self.kind


OPTIONS: tuple[Option, ...] = (
    Option("role-arn", parse_role_arn, "ARN of the role to assume and serve (required)", "ARN", role=True),
    Option("name", parse_name, "the role's name in logs, container-credentials path and token file "
           "(default: the last part of the role ARN)", "NAME", role=True),
    Option("host", parse_host, "address to listen on (default 127.0.0.1)", "ADDR"),
    Option("port", parse_port, f"TCP port to listen on (default {DEFAULT_PORT}; 0 picks a free one)", "PORT",
           role=True, kind=int),
    Option("role-session-name", parse_session_name,
           "session name for AssumeRole (default metadata-proxy-<hostname>), shown in CloudTrail", "NAME",
           role=True),
    Option("external-id", parse_external_id, "ExternalId that the role's trust policy requires", "ID", role=True),
    Option("duration-seconds", parse_duration,
           f"session length to ask STS for, 900..43200 (default {DEFAULT_DURATION})", "SECONDS", role=True, kind=int),
    Option("session-policy", parse_policy_file,
           "JSON policy file that scopes the role down for this daemon's sessions", "FILE", role=True, is_path=True),
    Option("region", parse_region,
           "region for STS and the instance identity (default: the source profile's, else us-east-1)", "REGION"),
    Option("sts-endpoint-url", parse_url, "STS endpoint, e.g. a VPC endpoint (default: the region's)", "URL"),
    Option("sts-timeout", parse_timeout, "seconds to wait for STS to connect and answer (default 10)", "SECONDS",
           kind=float),
    Option("allow-imdsv1", parse_bool, "serve GETs without an IMDSv2 token (default: tokens required)"),
    Option("allow-non-loopback", parse_bool,
           "allow --host to be a non-loopback address (anyone who reaches it gets the role)"),
    Option("container-credentials", parse_bool,
           "also serve the container-credentials protocol (AWS_CONTAINER_CREDENTIALS_FULL_URI)"),
    Option("container-token-file", parse_path,
           "file holding the container endpoint's token: read if it exists, else created (mode 0600)", "PATH",
           role=True, is_path=True),
    Option("instance-id", parse_instance_id, "instance id to report (default derived from the host name)", "ID"),
    Option("availability-zone", parse_availability_zone,
           "availability zone to report (default <region>a)", "AZ"),
    Option("allow-uid", parse_uid, "only this local uid may get tokens and credentials", "UID", kind=int,
           multiple=True),
    Option("allow-user", parse_user, "only this local user may get tokens and credentials", "USER", multiple=True),
    Option("hop-limit", parse_hop_limit, "IP TTL / IPv6 hop limit of the listeners' packets (IMDS uses 1)", "N",
           kind=int),
    Option("admin-port", parse_admin_port,
           "loopback port for /metrics, /healthz and /readyz (default: no admin listener)", "PORT", kind=int),
    Option("event-loop", parse_event_loop,
           "auto (uvloop if installed), asyncio or uvloop: see docs/performance.md", "LOOP"),
    Option("log-level", parse_log_level, "debug, info, warning or error (default info)", "LEVEL"),
    Option("log-format", parse_log_format, "text or json (one JSON object a line, for journald/CloudWatch)",
           "FORMAT"),
)
ROLE_TABLE_KEYS = frozenset(o.field for o in OPTIONS if o.role)
TOP_LEVEL_KEYS = frozenset({"role"} | {o.field for o in OPTIONS})


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares every option as a flag whose default is None, so 'not given' can fall back to env and file."""
    parser.add_argument("--config", metavar="PATH", default=None,
                        help=f"TOML config file (default {DEFAULT_CONFIG} if it exists) [env {ENV_PREFIX}CONFIG]")
    for option in OPTIONS:
        help_text = f"{option.help} [env {option.env}]"
        if option.metavar is None:
            parser.add_argument(option.flag, dest=option.field, action="store_const", const="true",
                                default=None, help=help_text)
        elif option.multiple:
            parser.add_argument(option.flag, dest=option.field, metavar=option.metavar, action="append",
                                default=None, help=help_text + " (repeatable; the variable is comma-separated)")
        else:
            parser.add_argument(option.flag, dest=option.field, metavar=option.metavar, default=None,
                                help=help_text)


def read_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def _parse(option: Option, raw: str, source: str) -> Any:
    try:
        return option.parse(raw)
    except ValueError as error:
        raise ConfigError(f"{source}: {error} (got {raw!r})") from None


def _parse_given(option: Option, raw: str | list[str], source: str) -> Any:
    """A flag's or variable's value; a repeatable option's values as a tuple."""
    if not option.multiple:
        assert isinstance(raw, str)
        return _parse(option, raw, source)
    items = raw if isinstance(raw, list) else [item.strip() for item in raw.split(",") if item.strip()]
    return tuple(_parse(option, item, source) for item in items)


def _from_file(option: Option, value: Any, where: str, base_dir: str) -> Any:
    if option.multiple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_from_file(replace(option, multiple=False), item, where, base_dir) for item in value)
    expected = option.toml_type
    if type(value) is not expected:  # exact: a TOML bool is an int to isinstance()
        if expected is float and type(value) is int:
            value = float(value)
        else:
            names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
            raise ConfigError(f"{where}: expected {names[expected]}, got {type(value).__name__} {value!r}")
    raw = str(value).lower() if expected is bool else str(value)
    if option.is_path and raw and not os.path.isabs(raw):
        raw = os.path.join(base_dir, raw)
    return _parse(option, raw, where)


def _check_keys(table: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(allowed))})")


def load_serve_config(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeConfig:
    """Flags over environment over config file over defaults, each value parsed once; raises ConfigError."""
    path = args.config or environ.get(ENV_PREFIX + "CONFIG")
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    file = read_config_file(path) if path else {}
    base_dir = os.path.dirname(os.path.abspath(path)) if path else ""
    _check_keys(file, TOP_LEVEL_KEYS, str(path))

    global_values: dict[str, Any] = {}
    role_defaults: dict[str, Any] = {}
    single_role_sources: list[str] = []
    for option in OPTIONS:
        raw, source = getattr(args, option.field, None), option.flag
        if raw is None and option.env in environ:
            raw, source = environ[option.env], option.env
        if raw is not None:
            value = _parse_given(option, raw, source)
            if option.role:
                single_role_sources.append(source)
        elif option.field in file:
            value = _from_file(option, file[option.field], f"{path}: {option.field}", base_dir)
        else:
            continue
        (role_defaults if option.role else global_values)[option.field] = value

    tables = file.get("role")
    if tables is None:
        if "role_arn" not in role_defaults:
            raise ConfigError("--role-arn is required (or METADATA_PROXY_ROLE_ARN, or role_arn in a config file)")
        roles = [RoleConfig(**role_defaults)]
    else:
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables) or not tables:
            raise ConfigError(f"{path}: role: expected one or more [[role]] tables")
        if single_role_sources:
            raise ConfigError(f"{single_role_sources[0]} describes a single role, but {path} has [[role]] tables: "
                              "set it in each [[role]] instead")
        roles = [_role_from_table(table, index, role_defaults, str(path), base_dir)
                 for index, table in enumerate(tables, 1)]
    config = ServeConfig(roles=tuple(roles), config_path=path, **global_values)
    check_roles(config)
    check_bind_address(config)
    return config


def _role_from_table(table: dict[str, Any], index: int, defaults: dict[str, Any], path: str,
                     base_dir: str) -> RoleConfig:
    where = f"{path}: role[{index}]"
    _check_keys(table, ROLE_TABLE_KEYS, where)
    values = dict(defaults)
    by_field = {o.field: o for o in OPTIONS}
    for key, value in table.items():
        values[key] = _from_file(by_field[key], value, f"{where}.{key}", base_dir)
    if "role_arn" not in values:
        raise ConfigError(f"{where}: role_arn is required")
    return RoleConfig(**values)


def check_roles(config: ServeConfig) -> None:
    seen_names: dict[str, int] = {}
    seen_ports: dict[int, int] = {}
    if config.admin_port is not None:
        seen_ports[config.admin_port] = 0
    for index, role in enumerate(config.roles, 1):
        if role.name in seen_names:
            raise ConfigError(f"role[{index}] and role[{seen_names[role.name]}] are both named {role.name!r}: "
                              "give each [[role]] its own name")
        seen_names[role.name] = index
        if role.port and role.port in seen_ports:
            other = f"role[{seen_ports[role.port]}]" if seen_ports[role.port] else "the admin listener"
            raise ConfigError(f"role[{index}] and {other} both use port {role.port}: give each its own port")
        seen_ports[role.port] = index


def check_bind_address(config: ServeConfig) -> None:
    if not ipaddress.ip_address(config.host).is_loopback and not config.allow_non_loopback:
        raise ConfigError(
            f"--host {config.host} is not a loopback address; every host that can reach it could take the "
            "role's credentials. Pass --allow-non-loopback if that is intended")


def default_session_name(hostname: str | None = None) -> str:
    """`metadata-proxy-<host>` so CloudTrail shows which machine acted, cut to STS's charset and 64 chars."""
    host = re.sub(r"[^\w+=,.@-]", "-", hostname or socket.gethostname()) or "host"
    return ("metadata-proxy-" + host)[:64]
