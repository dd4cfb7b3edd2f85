"""The values that flow from STS to the clients: what is assumed (RoleSpec) and what came back (Credentials).

Also the one home of the conversions several modules need: a role's name and account from its ARN, the
region fallback, and the one timestamp format every client parses.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from metadata_proxy.values import ROLE_ARN_RE

if TYPE_CHECKING:
    from metadata_proxy.config import RoleConfig

DEFAULT_REGION = "us-east-1"  # where STS and the instance identity live when nothing names a region
ASSUMED_ROLE_ARN_RE = re.compile(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([\w+=,.@-]{1,64})/[\w+=,.@-]+$")


def region_of(configured: str | None, session_region: str | None) -> str:
    """--region, else the source profile's region, else us-east-1."""
    return configured or session_region or DEFAULT_REGION


def _arn_part(role_arn: str, group: int) -> str:
    match = ROLE_ARN_RE.match(role_arn)
    if match is None:
        raise ValueError(f"not a role ARN: {role_arn}")
    return match.group(group)


def role_name_of(role_arn: str) -> str:
    """arn:aws:iam::A:role/path/role-01 -> role-01: what IMDS lists under security-credentials/."""
    return _arn_part(role_arn, 2)


def account_of(role_arn: str) -> str:
    return _arn_part(role_arn, 1)


def role_of_assumed(assumed_arn: str) -> str | None:
    """arn:aws:sts::B:assumed-role/role-02/session -> arn:aws:iam::B:role/role-02 (what policies name)."""
    match = ASSUMED_ROLE_ARN_RE.match(assumed_arn)
    return f"arn:{match.group(1)}:iam::{match.group(2)}:role/{match.group(3)}" if match else None


@dataclass(frozen=True)
class RoleSpec:
    """Every input of an AssumeRole call, and so the cache key: two specs that differ anywhere are two entries."""

    role_arn: str
    session_name: str
    external_id: str | None = None
    duration_seconds: int = 3600
    policy: str | None = None
    sts_endpoint_url: str | None = None
    region: str = DEFAULT_REGION
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Hashed on every request's cache lookup; compute it once.
        object.__setattr__(self, "_hash", hash((self.role_arn, self.session_name, self.external_id,
                                                self.duration_seconds, self.policy, self.sts_endpoint_url,
                                                self.region)))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def of(cls, role: RoleConfig, sts_endpoint_url: str | None, region: str) -> RoleSpec:
        """A configured role as the AssumeRole call it makes."""
        return cls(role_arn=role.role_arn, session_name=role.role_session_name, external_id=role.external_id,
                   duration_seconds=role.duration_seconds, policy=role.session_policy,
                   sts_endpoint_url=sts_endpoint_url, region=region)

    @property
    def role_name(self) -> str:
        return role_name_of(self.role_arn)

    @property
    def account_id(self) -> str:
        return account_of(self.role_arn)


@dataclass(frozen=True, repr=False)
class Credentials:
    """One AssumeRole result. Times are POSIX seconds; repr shows no key material, so logging one is safe."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: float
    obtained_at: float
    assumed_role_arn: str  # validated by sts.py: arn:aws:sts::<account>:assumed-role/<role>/<session>

    @property
    def account_id(self) -> str:
        return self.assumed_role_arn.split(":")[4]

    @property
    def lifetime(self) -> float:
        return self.expiration - self.obtained_at

    def __repr__(self) -> str:
        return f"Credentials(<redacted>, expires {format_time(self.expiration)})"


def format_time(seconds: float) -> str:
    """The one timestamp format every client parses: YYYY-MM-DDTHH:MM:SSZ (contract §5.1)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
