"""The options of `metadata-proxy serve`, declared once each.

Every option's flag (`--role-arn`), variable (`METADATA_PROXY_ROLE_ARN`) and config key (`role_arn`) are
generated from its one entry in OPTIONS, so they cannot drift apart. Options are global (one value for the
daemon) or per role. A config file may list several roles as `[[role]]` tables, each served on its own IMDS
listener; its top-level role keys are then defaults for every table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metadata_proxy.addresses import DEFAULT_INTERCEPT_PORT, DEFAULT_PORT
from metadata_proxy.values import (
    parse_admin_port,
    parse_audit_interval,
    parse_availability_zone,
    parse_bool,
    parse_duration,
    parse_event_loop,
    parse_external_id,
    parse_group,
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
DEFAULT_DURATION = 3600
DEFAULT_CONFIG = "/etc/metadata-proxy/config.toml"


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
    key: str | None = None  # the config key (and field), when it is not the flag's name: a plural for a list

    @property
    def field(self) -> str:
        return self.key or self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.replace("-", "_").upper()

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
    Option("container-token-group", parse_group,
           "group (name or gid) that may read the container token files: they get mode 0640 and this group, "
           "for consumers running as other users", "GROUP"),
    Option("instance-id", parse_instance_id, "instance id to report (default derived from the host name)", "ID"),
    Option("availability-zone", parse_availability_zone,
           "availability zone to report (default <region>a)", "AZ"),
    Option("allow-uid", parse_uid, "only this local uid may get tokens and credentials", "UID", kind=int,
           multiple=True),
    Option("allow-user", parse_user, "only this local user may get tokens and credentials", "USER", multiple=True),
    Option("user", parse_user, "on the transparent endpoint, serve this role to this local user (repeatable)",
           "USER", role=True, multiple=True, key="users"),
    Option("group", parse_group, "on the transparent endpoint, serve this role to the members of this group",
           "GROUP", role=True, multiple=True, key="groups"),
    Option("intercept-user", parse_user, "send this local user's requests to 169.254.169.254 here (transparent "
           "mode; installing the rules needs CAP_NET_ADMIN)", "USER", multiple=True, key="intercept_users"),
    Option("intercept-group", parse_group, "the same for processes whose group is this one", "GROUP",
           multiple=True, key="intercept_groups"),
    Option("intercept-port", parse_admin_port,
           f"loopback port of the transparent endpoint (default {DEFAULT_INTERCEPT_PORT})", "PORT", kind=int),
    Option("hop-limit", parse_hop_limit, "IP TTL / IPv6 hop limit of the listeners' packets (IMDS uses 1)", "N",
           kind=int),
    Option("admin-port", parse_admin_port,
           "loopback port for /metrics, /healthz and /readyz (default: no admin listener)", "PORT", kind=int),
    Option("event-loop", parse_event_loop,
           "auto (uvloop if installed), asyncio or uvloop: see docs/performance.md", "LOOP"),
    Option("log-level", parse_log_level, "debug, info, warning or error (default info)", "LEVEL"),
    Option("audit-interval", parse_audit_interval,
           "seconds between audit records, one per user, role and kind of request (default 60)", "SECONDS",
           kind=int),
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
