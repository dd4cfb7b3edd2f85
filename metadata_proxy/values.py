"""How the text of each setting becomes a value: one parser per kind, each returning the value or raising
ValueError with the reason (config.py adds which flag, variable or key it was)."""

from __future__ import annotations

import ipaddress
import json
import re
from urllib.parse import urlsplit

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


def parse_log_format(value: str) -> str:
    if value.lower() not in ("text", "json"):
        raise ValueError("expected text or json")
    return value.lower()


def parse_uid(value: str) -> int:
    uid = parse_int(value)
    if not 0 <= uid < 2**32 - 1:
        raise ValueError("expected a uid")
    return uid


def parse_user(value: str) -> int:
    """A user name (or a numeric uid) as the uid the kernel reports for its sockets."""
    from metadata_proxy.peercred import parse_user as lookup

    return lookup(value)


def parse_hop_limit(value: str) -> int:
    hops = parse_int(value)
    if not 1 <= hops <= 255:
        raise ValueError("expected a hop count from 1 to 255")
    return hops


def parse_event_loop(value: str) -> str:
    if value.lower() not in ("auto", "asyncio", "uvloop"):
        raise ValueError("expected auto, asyncio or uvloop")
    return value.lower()


def parse_timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError("expected seconds") from None
    if not 0.5 <= seconds <= 120:
        raise ValueError("expected 0.5 to 120 seconds")
    return seconds


def parse_admin_port(value: str) -> int:
    port = parse_int(value)
    if not 1 <= port <= 65535:
        raise ValueError("expected a TCP port from 1 to 65535")
    return port


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def parse_account(value: str) -> str:
    if not re.fullmatch(r"\d{12}", value):
        raise ValueError("expected a 12-digit AWS account id")
    return value


def parse_bucket(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
        raise ValueError("expected an S3 bucket name")
    return value


NAME_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,63}$")


def parse_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError("expected 1 to 64 letters, digits, '.', '_' or '-'")
    return value


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
