"""The EC2 instance metadata surface (IMDSv2) for one role, as clients expect it (imds-client-contract.md).

Routing is an exact match on the request path after the two normalisations clients need (§2): runs of `/`
collapse (Java sends `//latest/...`) and a trailing `/` is optional. Nothing is decoded, so `%2e%2e`, `..`
and friends match no route and get 404, like every path not served here. On a role's own listener nothing is
proxied to the real IMDS (user-data often holds secrets; peers.md "credential path leaks"); the transparent
endpoint (transparent.py) passes the instance's own non-credential paths through.

Every body but the credential documents is built once per listener; the credential documents are rendered
once per refresh (memoised by the store's generation), so a request does one dict lookup and compares a
counter and a time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import platform
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from aiohttp import web
from multidict import CIMultiDict, istr

from metadata_proxy.metrics import Metrics
from metadata_proxy.model import Credentials, RoleSpec, format_time
from metadata_proxy.refresher import RoleState
from metadata_proxy.request import GatedRequest
from metadata_proxy.store import CredentialStore, usable_until
from metadata_proxy.tokens import TokenAuthority, parse_ttl

TOKEN_PATH = "/latest/api/token"
TOKEN_HEADER = istr("X-aws-ec2-metadata-token")  # istr: a header lookup that needs no case folding
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TTL_ECHO_HEADER = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
VERSIONED_TOKEN_PATH = re.compile(r"^/[^/]+/api/token$")
SLASHES = re.compile(r"/{2,}")
TEXT = "text/plain"
# Built once: aiohttp copies a CIMultiDict faster than it builds one from a dict or from content_type=.
TEXT_HEADERS = CIMultiDict({"Content-Type": TEXT})


def normalize_path(raw_path: str) -> str:
    """`//latest/meta-data/` -> `/latest/meta-data`; the query string is ignored."""
    if "//" not in raw_path and "?" not in raw_path and raw_path[-1:] != "/":
        return raw_path or "/"  # what almost every client sends: nothing to do
    path = SLASHES.sub("/", raw_path.split("?", 1)[0])
    return path.rstrip("/") or "/"


@dataclass(frozen=True)
class InstanceIdentity:
    """The instance-level values IMDS reports; configurable, with defaults that look like a real instance."""

    instance_id: str
    region: str
    availability_zone: str
    account_id: str
    pending_time: float
    instance_type: str = "t3.micro"
    image_id: str = "ami-00000000000000000"
    private_ip: str = "127.0.0.1"

    def document(self) -> dict[str, object]:
        """Field set of the instance identity document (contract §5.4)."""
        machine = platform.machine().lower()
        return {
            "accountId": self.account_id,
            "architecture": {"aarch64": "arm64", "amd64": "x86_64"}.get(machine, machine or "x86_64"),
            "availabilityZone": self.availability_zone,
            "billingProducts": None,
            "devpayProductCodes": None,
            "imageId": self.image_id,
            "instanceId": self.instance_id,
            "instanceType": self.instance_type,
            "kernelId": None,
            "marketplaceProductCodes": None,
            "pendingTime": format_time(self.pending_time),
            "privateIp": self.private_ip,
            "ramdiskId": None,
            "region": self.region,
            "version": "2017-09-30",
        }


def credentials_document(creds: Credentials, *, extended: bool) -> bytes:
    """Contract §5.1 (field order of AWS's own example) and §5.2 (plus AccountId)."""
    doc = {
        "Code": "Success",
        "LastUpdated": format_time(creds.obtained_at),
        "Type": "AWS-HMAC",
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key,
        "Token": creds.session_token,
        "Expiration": format_time(creds.expiration),
    }
    if extended:
        doc["AccountId"] = creds.account_id
    return json.dumps(doc, indent=2).encode()


def error_document(state: RoleState, now: float) -> bytes:
    """What real IMDS answers (200, Code != Success) when it cannot assume the role (contract §5.1, §6.4)."""
    error = state.last_error
    if error is None:
        code, message = "CredentialsUnavailable", "no valid credentials are cached"
    else:
        code = "AssumeRoleUnauthorizedAccess" if error.code == "AccessDenied" else error.code
        message = f"metadata-proxy has no valid credentials for {state.spec.role_arn}: AssumeRole failed: {error}"
    return json.dumps({"Code": code, "Message": message, "LastUpdated": format_time(now)}, indent=2).encode()


@dataclass(frozen=True)
class Rendered:
    generation: int  # of the store it was rendered from
    until: float  # when the store would stop handing out these credentials
    legacy: bytes
    extended: bytes


def listing(*items: str) -> bytes:
    return "\n".join(items).encode()


Fallback = Callable[[GatedRequest, str], Awaitable[web.Response]]
# A path's entry in the table: its label and its body, as bytes when it never changes, else a function
# that renders it (the credential documents).
Route = tuple[tuple[str, str], bytes | Callable[[], bytes]]


async def not_found(request: GatedRequest, path: str) -> web.Response:
    return text_response(404, "Not Found")


class ImdsProtocol:
    """IMDSv2 around a table of paths: token issue, methods, the token check, then the table. A path not in
    the table goes to `fallback` (404 unless told otherwise)."""

    def __init__(self, tokens: TokenAuthority, metrics: Metrics, *, require_token: bool,
                 fallback: Fallback = not_found) -> None:
        self._tokens = tokens
        self._metrics = metrics
        self._require_token = require_token
        self._fallback = fallback
        self._routes: dict[str, Route] = {}

    async def __call__(self, request: GatedRequest) -> web.StreamResponse:
        answer = self.answer(request)
        return answer if isinstance(answer, web.StreamResponse) else await answer

    def answer(self, request: GatedRequest) -> web.StreamResponse | Awaitable[web.StreamResponse]:
        """The response, at once; only a path for the fallback returns an awaitable (gate.Routes)."""
        raw = request.raw_path
        # A path in the table is its own normal form: only the others are normalised (and looked up again).
        route = self._routes.get(raw)
        path = raw if route is not None else normalize_path(raw)
        method = request.method
        if method == "PUT":
            return self._put(request, path)
        if method not in ("GET", "HEAD"):
            return refuse(request, "method", 405, "Method Not Allowed", {"Allow": "GET, HEAD, PUT"})
        if path == TOKEN_PATH:
            return refuse(request, "method", 405, "Method Not Allowed", {"Allow": "PUT"})
        # §3.2: the token is checked before the path, so without one every path is 401 in required mode.
        token = request.headers.get(TOKEN_HEADER)
        if token is not None and not self._tokens.verify(token):
            self._metrics.tokens_rejected.inc()
            return refuse(request, "token", 401, "Unauthorized")
        if token is None and self._require_token:
            return refuse(request, "token", 401, "Unauthorized")
        if route is None and (route := self._routes.get(path)) is None:
            return self._fallback(request, path)
        label, body = route
        request.label = label
        return web.Response(body=body if type(body) is bytes else body(), headers=TEXT_HEADERS)

    def _put(self, request: GatedRequest, path: str) -> web.Response:
        request.label = ("token", "")
        if path != TOKEN_PATH:
            if VERSIONED_TOKEN_PATH.match(path):  # §3.1: version-specific token paths are forbidden
                return refuse(request, "token", 403, "Forbidden")
            return refuse(request, "method", 405, "Method Not Allowed", {"Allow": "GET, HEAD"})
        if "X-Forwarded-For" in request.headers:  # §3.1: a token request that went through a proxy
            return refuse(request, "token", 403, "Forbidden")
        ttl = parse_ttl(request.headers.get(TTL_HEADER))
        if ttl is None:
            return text_response(400, "Bad Request: X-aws-ec2-metadata-token-ttl-seconds must be 1..21600")
        self._metrics.tokens_issued.inc()
        return web.Response(text=self._tokens.issue(ttl), content_type=TEXT,
                            headers={TTL_ECHO_HEADER: str(ttl)})


class ImdsRoutes(ImdsProtocol):
    """The IMDS handler of one role (EC2 serves exactly one). With instance_metadata=False only the role's
    own paths (iam/) are answered here and every other path goes to `fallback` (the transparent endpoint
    passes those through to the real IMDS)."""

    def __init__(self, spec: RoleSpec, state: RoleState, store: CredentialStore, tokens: TokenAuthority,
                 identity: InstanceIdentity, metrics: Metrics, *, require_token: bool,
                 now: Callable[[], float], instance_metadata: bool = True, fallback: Fallback = not_found) -> None:
        super().__init__(tokens, metrics, require_token=require_token, fallback=fallback)
        self.role_arn = spec.role_arn
        self._spec = spec
        self._state = state
        self._store = store
        self._now = now
        self._rendered: Rendered | None = None
        name = spec.role_name
        creds_prefix = "/latest/meta-data/iam/security-credentials"
        profile_arn = f"arn:aws:iam::{identity.account_id}:instance-profile/{name}"
        iam_info = {"Code": "Success", "LastUpdated": format_time(identity.pending_time),
                    "InstanceProfileArn": profile_arn, "InstanceProfileId": _profile_id(spec.role_arn)}
        static = {
            "/latest/meta-data/iam": listing("info", "security-credentials/"),
            "/latest/meta-data/iam/info": json.dumps(iam_info, indent=2).encode(),
            creds_prefix: name.encode(),
            creds_prefix + "-extended": name.encode(),
        }
        if instance_metadata:
            static |= {
                "/": listing("latest"),
                "/latest": listing("dynamic", "meta-data"),
                "/latest/meta-data": listing("iam/", "instance-id", "instance-type", "placement/"),
                "/latest/meta-data/instance-id": identity.instance_id.encode(),
                "/latest/meta-data/instance-type": identity.instance_type.encode(),
                "/latest/meta-data/placement": listing("availability-zone", "region"),
                "/latest/meta-data/placement/availability-zone": identity.availability_zone.encode(),
                "/latest/meta-data/placement/region": identity.region.encode(),
                "/latest/dynamic": listing("instance-identity/"),
                "/latest/dynamic/instance-identity": listing("document"),
                "/latest/dynamic/instance-identity/document": json.dumps(identity.document(), indent=2).encode(),
            }
        self._routes = {path: (("role-list" if path.startswith(creds_prefix) else "metadata", ""), body)
                        for path, body in static.items()}
        self._routes[f"{creds_prefix}/{name}"] = (("credentials", ""), partial(self._credentials, False))
        self._routes[f"{creds_prefix}-extended/{name}"] = (("credentials-extended", ""),
                                                           partial(self._credentials, True))

    def _credentials(self, extended: bool) -> bytes:
        """Both documents are rendered once per refresh; until the store changes or they reach the store's
        cut-off, a request only compares a counter and a time."""
        rendered = self._rendered
        if rendered is None or rendered.generation != self._store.generation or self._now() >= rendered.until:
            creds = self._store.get(self._spec)
            if creds is None:
                return error_document(self._state, self._now())
            rendered = self._rendered = Rendered(self._store.generation, usable_until(creds),
                                                 credentials_document(creds, extended=False),
                                                 credentials_document(creds, extended=True))
        return rendered.extended if extended else rendered.legacy


def refuse(request: GatedRequest, reason: str, status: int, text: str,
           headers: dict[str, str] | None = None) -> web.Response:
    """A refusal, marked on the request so the access log and the refused-requests metric see its reason."""
    request.label = (request.label[0], reason)
    return text_response(status, text, headers)


def text_response(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, content_type=TEXT, headers=headers)


def _profile_id(role_arn: str) -> str:
    """A stable, realistic-looking InstanceProfileId (AIPA + 17 chars) derived from the role ARN."""
    digest = base64.b32encode(hashlib.sha256(role_arn.encode()).digest()).decode()
    return "AIPA" + digest[:17]
