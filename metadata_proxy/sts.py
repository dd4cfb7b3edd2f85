"""The one place that calls STS AssumeRole, and what its answers mean.

The call is blocking boto3; the refresher runs it in a worker thread. Every failure becomes an StsError carrying
STS's own error code, whether it is worth retrying, and what an operator should check, so that the log line and
the start-up error say the same thing. An answer counts only if it is usable: non-empty keys and a well-formed
assumed-role ARN (botocore guards the same way: "refreshed credentials are still expired"); the expiry is
judged by the store, which knows how much time a credential must have left to be served.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import boto3
import botocore.config
import botocore.exceptions

from metadata_proxy.model import ASSUMED_ROLE_ARN_RE, Credentials, RoleSpec

# STS error codes that a retry cannot fix, with what to check. Anything else is treated as transient if
# STS answered 5xx/429 or not at all, and as permanent for other 4xx answers.
TRUST_HINT = ("check that the trust policy of {role_arn} names the source identity as Principal (and its "
              "ExternalId condition matches --external-id), and that the source identity's own policy allows "
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
    "SourceCredentialsExpired": "the source profile's SSO login has expired: run `aws sso login --profile ...`",
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
    if isinstance(error, botocore.exceptions.SSOError):  # the source's SSO login expired since start
        return StsError("SourceCredentialsExpired", str(error), transient=False, role_arn=role_arn)
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

    def __init__(self, session: boto3.Session, clock_time: Callable[[], float] = time.time,
                 timeout: float = 10.0) -> None:
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
                # Whole seconds, as every document shows it: so "never in the last 60 s" holds to the second
                # for what clients see, not only for the exact instant STS named.
                expiration=float(math.floor(creds["Expiration"].timestamp())),
                obtained_at=self._time(),
                assumed_role_arn=response["AssumedRoleUser"]["Arn"],
            )
        except Exception as error:
            raise classify(error, spec.role_arn) from None
        check_answer(result, spec.role_arn)
        return result


def check_answer(creds: Credentials, role_arn: str) -> None:
    """Raises a transient StsError for an answer no client could use: blank keys, or an ARN without an account."""
    if not (creds.access_key_id and creds.secret_access_key and creds.session_token):
        raise StsError("IncompleteResponse", "STS returned blank credentials", transient=True, role_arn=role_arn)
    if not isinstance(creds.assumed_role_arn, str) or not ASSUMED_ROLE_ARN_RE.match(creds.assumed_role_arn):
        raise StsError("IncompleteResponse", "STS returned a malformed AssumedRoleUser ARN", transient=True,
                       role_arn=role_arn)
