"""Settings of `metadata-proxy serve`, read from flags, the environment and a TOML file (options.py lists them).

Precedence: flag, then variable, then config file, then default. Values are parsed and validated here, once,
and a bad one is a ConfigError naming the flag, variable or key: the CLI prints it as one line and exits 2,
before anything is bound or called. The config file must be a regular file of UTF-8 text: anything else (a
FIFO, a device, a Latin-1 comment) is such an error too, never a blocked read or a traceback.

Options are global (one value for the daemon) or per role. A config file may list several roles as
`[[role]]` tables, each served on its own IMDS listener; its top-level role keys are then defaults for every
table. Without `[[role]]` tables the flags, variables and top-level keys describe the one role.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from metadata_proxy.addresses import DEFAULT_INTERCEPT_PORT, DEFAULT_PORT
from metadata_proxy.config_checks import check_config
from metadata_proxy.errors import ConfigError
from metadata_proxy.model import role_name_of
from metadata_proxy.options import (
    DEFAULT_CONFIG,
    DEFAULT_DURATION,
    ENV_PREFIX,
    OPTIONS,
    ROLE_TABLE_KEYS,
    TOP_LEVEL_KEYS,
    Option,
)


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
    users: tuple[int, ...] = ()  # the transparent endpoint serves this role to these uids ...
    groups: tuple[int, ...] = ()  # ... and to the members of these groups

    @property
    def mapped(self) -> bool:
        return bool(self.users or self.groups)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", role_name_of(self.role_arn))
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
    container_token_group: int | None = None  # a gid: consumers in it may read the token files
    instance_id: str | None = None
    availability_zone: str | None = None
    allow_uid: tuple[int, ...] = ()
    allow_user: tuple[int, ...] = ()  # resolved to uids when read
    intercept_users: tuple[int, ...] = ()
    intercept_groups: tuple[int, ...] = ()
    intercept_port: int = DEFAULT_INTERCEPT_PORT
    hop_limit: int | None = None
    admin_port: int | None = None
    event_loop: str = "auto"
    log_level: str = "info"
    log_format: str = "text"
    audit_interval: int = 60
    config_path: str | None = None

    @functools.cached_property  # read for every request: computed once per configuration
    def allowed_uids(self) -> frozenset[int] | None:
        """None when every local user may connect (the default, as on EC2)."""
        uids = frozenset(self.allow_uid) | frozenset(self.allow_user)
        return uids or None

    @property
    def intercepting(self) -> bool:
        """Transparent mode: some users' requests to the IMDS address are redirected to this daemon."""
        return bool(self.intercept_users or self.intercept_groups)


MAX_CONFIG_SIZE = 1 << 20  # a config file is a few lines; refuse to slurp something else


def read_config_file(path: str) -> dict[str, Any]:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below, as not a regular file).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"cannot read config file {path}: not a regular file")
            raw = file.read(MAX_CONFIG_SIZE + 1)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    if len(raw) > MAX_CONFIG_SIZE:
        raise ConfigError(f"cannot read config file {path}: larger than {MAX_CONFIG_SIZE} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[error.start]:02x}); TOML files "
                          "must be UTF-8") from None
    try:
        return tomllib.loads(text)
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
    check_config(config)
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


def default_session_name(hostname: str | None = None) -> str:
    """`metadata-proxy-<host>` so CloudTrail shows which machine acted, cut to STS's charset and 64 chars."""
    host = re.sub(r"[^\w+=,.@-]", "-", hostname or socket.gethostname()) or "host"
    return ("metadata-proxy-" + host)[:64]
