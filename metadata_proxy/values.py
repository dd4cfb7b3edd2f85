"""How the text of each setting becomes a value: one parser per kind, each returning the value or raising
ValueError with the reason (config.py adds which flag, variable or key it was)."""

from __future__ import annotations

import grp
import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

Parser = Callable[[str], Any]


def matching(pattern: str, reason: str) -> Parser:
    """A parser accepting the whole value if it matches pattern."""
    regex = re.compile(pattern)

    def parse(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(reason)
        return value

    return parse


def whole_number(value: str) -> int:
    try:
        return int(value, 10)
    except ValueError:
        raise ValueError("expected a whole number") from None


def within(low: int, high: int, reason: str) -> Parser:
    """A parser of whole numbers from low to high."""

    def parse(value: str) -> int:
        number = whole_number(value)
        if not low <= number <= high:
            raise ValueError(reason)
        return number

    return parse


def one_of(*choices: str) -> Parser:
    """A parser of a case-insensitive choice, returned in lower case."""

    def parse(value: str) -> str:
        if value.lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value.lower()

    return parse


ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$")
SESSION_NAME_RE = re.compile(r"^[\w+=,.@-]{2,64}$")

parse_role_arn = matching(ROLE_ARN_RE.pattern, "expected an IAM role ARN like arn:aws:iam::123456789012:role/role-01")
parse_session_name = matching(SESSION_NAME_RE.pattern, "expected 2 to 64 characters from letters, digits and +=,.@_-")
parse_external_id = matching(r"[\w+=,.@:/-]{2,1224}",
                             "expected 2 to 1224 characters from letters, digits and +=,.@:/_-")
parse_region = matching(r"[a-z]{2}(-[a-z]+)+-\d+", "expected an AWS region name like us-east-1")
parse_availability_zone = matching(r"[a-z]{2}(-[a-z]+)+-\d+[a-z]", "expected an availability zone like us-east-1a")
parse_instance_id = matching(r"i-[0-9a-f]{8,17}", "expected an instance id like i-0123456789abcdef0")
parse_account = matching(r"\d{12}", "expected a 12-digit AWS account id")
parse_bucket = matching(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", "expected an S3 bucket name")
parse_name = matching(r"[A-Za-z0-9][\w.-]{0,63}", "expected 1 to 64 letters, digits, '.', '_' or '-'")

parse_port = within(0, 65535, "expected a TCP port from 1 to 65535 (0 picks a free one)")
parse_admin_port = within(1, 65535, "expected a TCP port from 1 to 65535")
parse_duration = within(900, 43200, "expected seconds from 900 to 43200 (STS's limits; role chaining caps it at 3600)")
parse_uid = within(0, 2**32 - 2, "expected a uid")
parse_hop_limit = within(1, 255, "expected a hop count from 1 to 255")
parse_audit_interval = within(1, 86400, "expected seconds from 1 to 86400")

parse_log_level = one_of("debug", "info", "warning", "error")
parse_log_format = one_of("text", "json")
parse_event_loop = one_of("auto", "asyncio", "uvloop")


def parse_host(value: str) -> str:
    if value == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        raise ValueError("expected an IP address to bind, e.g. 127.0.0.1 or ::1") from None


def parse_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL")
    return value


def parse_user(value: str) -> int:
    """A user name (or a numeric uid) as the uid the kernel reports for its sockets."""
    from metadata_proxy.peercred import parse_user as lookup

    return lookup(value)


def parse_group(value: str) -> int:
    """A group name, or a numeric gid (which need not have a name here, as in a container)."""
    if value.isdigit():
        return parse_uid(value)  # the same range as a uid
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise ValueError(f"no such group: {value}") from None


def parse_timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError("expected seconds") from None
    if not 0.5 <= seconds <= 120:
        raise ValueError("expected 0.5 to 120 seconds")
    return seconds


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def parse_path(value: str) -> str:
    if not value or "\0" in value:
        raise ValueError("expected a file path")
    return value


def parse_policy_file(value: str) -> str:
    """Reads and checks a session policy now, so a typo stops the start rather than every refresh."""
    try:
        with open(parse_path(value), encoding="utf-8") as file:
            text = file.read()
    except OSError as error:
        raise ValueError(f"cannot read {value}: {error.strerror}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{value} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") \
            from None
    if not isinstance(document, dict) or "Statement" not in document:
        raise ValueError(f"{value} is not an IAM policy (a JSON object with a Statement)")
    return json.dumps(document, separators=(",", ":"))
