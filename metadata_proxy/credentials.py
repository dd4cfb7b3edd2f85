"""The domain values (what is assumed, what came back) and the one place that calls STS AssumeRole.

The STS call is blocking boto3; the refresher runs it in a worker thread. Every failure becomes an StsError
carrying STS's own error code, whether it is worth retrying, and what an operator should check, so that the
log line and the start-up error say the same thing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import boto3
import botocore.config
import botocore.exceptions

from metadata_proxy.values import ROLE_ARN_RE


@dataclass(frozen=True)
class RoleSpec:
    """Every input of an AssumeRole call, and so the cache key: two specs that differ anywhere are two entries."""

    role_arn: str
    session_name: str
    external_id: str | None = None
    duration_seconds: int = 3600
    policy: str | None = None
    sts_endpoint_url: str | None = None
    region: str = "us-east-1"
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Hashed on every request's cache lookup; compute it once.
        object.__setattr__(self, "_hash", hash((self.role_arn, self.session_name, self.external_id,
                                                self.duration_seconds, self.policy, self.sts_endpoint_url,
                                                self.region)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def role_name(self) -> str:
        """The last path segment of the ARN: what IMDS lists under security-credentials/."""
        return _arn_part(self.role_arn, 2)

    @property
    def account_id(self) -> str:
        return _arn_part(self.role_arn, 1)


def _arn_part(role_arn: str, group: int) -> str:
    match = ROLE_ARN_RE.match(role_arn)
    if match is None:
        raise ValueError(f"not a role ARN: {role_arn}")
    return match.group(group)


@dataclass(frozen=True, repr=False)
class Credentials:
    """One AssumeRole result. Times are POSIX seconds; repr shows no key material, so logging one is safe."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: float
    obtained_at: float
    assumed_role_arn: str

    @property
    def account_id(self) -> str:
        """Field 5 of arn:aws:sts::<account>:assumed-role/<role>/<session>."""
        return self.assumed_role_arn.split(":")[4]

    @property
    def lifetime(self) -> float:
        return self.expiration - self.obtained_at

    def __repr__(self) -> str:
        return f"Credentials(<redacted>, expires {format_time(self.expiration)})"


def format_time(seconds: float) -> str:
    """The one timestamp format every client parses: YYYY-MM-DDTHH:MM:SSZ (contract §5.1)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# STS error codes that a retry cannot fix, with what to check. Anything else is treated as transient if
# STS answered 5xx/429 or not at all, and as permanent for other 4xx answers.
TRUST_HINT = ("check that role-01's trust policy names the source identity as Principal (and its ExternalId "
              "condition matches --external-id), and that the source role's policy (policy-02) allows "
              "sts:AssumeRole on {role_arn}")
SOURCE_HINT = ("check the source credentials: the instance profile, AWS_PROFILE, or AWS_ACCESS_KEY_ID/"
               "AWS_SECRET_ACCESS_KEY in the daemon's environment")
PERMANENT_HINTS = {
    "AccessDenied": TRUST_HINT,
    "InvalidClientTokenId": SOURCE_HINT,
    "SignatureDoesNotMatch": SOURCE_HINT,
    "UnrecognizedClientException": SOURCE_HINT,
    "IncompleteSignature": SOURCE_HINT,
    "ExpiredToken": "the source credentials have expired; renew them (aws sso login, new keys)",
    "NoSourceCredentials": SOURCE_HINT,
    "ValidationError": ("check --duration-seconds (role chaining allows at most 3600), --role-session-name "
                        "and --external-id"),
    "MalformedPolicyDocument": "check the session policy",
    "PackedPolicyTooLarge": "shorten the session policy",
    "RegionDisabledException": ("STS is not activated in this region: activate it in IAM account settings, "
                                "or use --region / --sts-endpoint-url of an enabled region"),
}
TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "ServiceUnavailable", "InternalFailure", "InternalError", "IDPCommunicationError", "RequestTimeout",
})


class StsError(Exception):
    """An AssumeRole that did not return credentials. str() is a log-ready line without secrets."""

    def __init__(self, code: str, message: str, *, transient: bool, role_arn: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.transient = transient
        self.role_arn = role_arn

    @property
    def hint(self) -> str:
        if self.transient:
            return "a transient error; retrying"
        return PERMANENT_HINTS.get(self.code, "check the role ARN and the IAM policies").format(
            role_arn=self.role_arn)


def classify(error: Exception, role_arn: str) -> StsError:
    """Maps whatever boto3 raised to an StsError with STS's code and a retry decision."""
    if isinstance(error, botocore.exceptions.ClientError):
        info = error.response.get("Error", {})
        code = str(info.get("Code") or "Unknown")
        message = str(info.get("Message") or "")
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        transient = code in TRANSIENT_CODES or (code not in PERMANENT_HINTS and (status >= 500 or status == 429))
        return StsError(code, message, transient=transient, role_arn=role_arn)
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return StsError("NoSourceCredentials", "no source credentials found", transient=False, role_arn=role_arn)
    if isinstance(error, (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError)):
        return StsError("Timeout", str(error), transient=True, role_arn=role_arn)
    if isinstance(error, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        return StsError("ConnectionError", str(error), transient=True, role_arn=role_arn)
    # Unparsable answers (an HTML 502 from a proxy) and the like: worth another try.
    return StsError(type(error).__name__, str(error), transient=True, role_arn=role_arn)


class AssumeRoleClient:
    """Calls STS with the daemon's source credentials. Thread-safe: calls come from worker threads."""

    def __init__(self, session: boto3.Session, clock_time=time.time, timeout: float = 10.0) -> None:
        self._session = session
        # The refresher owns retries (with backoff and logging of every failure), so boto3 makes one attempt.
        self._config = botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"},
                                              connect_timeout=min(5.0, timeout), read_timeout=timeout)
        self._clients: dict[tuple[str, str | None], object] = {}
        self._lock = threading.Lock()  # boto3 sessions are not safe to create clients from concurrently
        self._time = clock_time

    def _client(self, spec: RoleSpec):
        key = (spec.region, spec.sts_endpoint_url)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._session.client(
                    "sts", region_name=spec.region, endpoint_url=spec.sts_endpoint_url, config=self._config)
            return self._clients[key]

    def assume(self, spec: RoleSpec) -> Credentials:
        params: dict[str, object] = {"RoleArn": spec.role_arn, "RoleSessionName": spec.session_name,
                                     "DurationSeconds": spec.duration_seconds}
        if spec.external_id:
            params["ExternalId"] = spec.external_id
        if spec.policy:
            params["Policy"] = spec.policy
        try:
            response = self._client(spec).assume_role(**params)
            creds = response["Credentials"]
            result = Credentials(
                access_key_id=creds["AccessKeyId"],
                secret_access_key=creds["SecretAccessKey"],
                session_token=creds["SessionToken"],
                expiration=creds["Expiration"].timestamp(),
                obtained_at=self._time(),
                assumed_role_arn=response["AssumedRoleUser"]["Arn"],
            )
        except Exception as error:
            raise classify(error, spec.role_arn) from None
        if not (result.access_key_id and result.secret_access_key and result.session_token):
            raise StsError("IncompleteResponse", "STS returned blank credentials", transient=True,
                           role_arn=spec.role_arn)
        return result
