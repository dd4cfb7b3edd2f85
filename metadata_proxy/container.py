"""The container-credentials protocol (contract §7): what SDKs fetch from AWS_CONTAINER_CREDENTIALS_FULL_URI.

Safer than IMDS for sidecars: a consumer needs the role's token (sent verbatim as `Authorization`), not just
a network position. The token lives in a file the consumer reads through AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE
(tokenfile.py).
"""

from __future__ import annotations

import hmac
import json

from aiohttp import web

from metadata_proxy.model import Credentials, RoleSpec, format_time
from metadata_proxy.refresher import RoleState
from metadata_proxy.request import GatedRequest
from metadata_proxy.store import CredentialStore


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """Both casings: Go reads code/message, JS reads Code/Message (contract §7.2)."""
    body = {"code": code, "message": message, "Code": code, "Message": message}
    return web.json_response(body, status=status, headers=headers)


class ContainerRoutes:
    """GET <path> with the right Authorization header answers the role's credentials as JSON."""

    def __init__(self, spec: RoleSpec, state: RoleState, store: CredentialStore, token: str) -> None:
        self._spec = spec
        self._state = state
        self._store = store
        self._token = token.encode()
        self._rendered: tuple[Credentials, bytes] | None = None

    def _document(self, creds: Credentials) -> bytes:
        if self._rendered is None or self._rendered[0] is not creds:
            self._rendered = (creds, json.dumps({
                "AccessKeyId": creds.access_key_id,
                "SecretAccessKey": creds.secret_access_key,
                "Token": creds.session_token,
                "Expiration": format_time(creds.expiration),
                "AccountId": creds.account_id,
                "RoleArn": self._spec.role_arn,
            }).encode())
        return self._rendered[1]

    async def __call__(self, request: GatedRequest) -> web.Response:
        request.label = ("container", "")
        if request.method not in ("GET", "HEAD"):
            request.label = ("container", "method")
            return error_response(405, "MethodNotAllowed", "use GET", {"Allow": "GET, HEAD"})
        presented = request.headers.get("Authorization")
        if presented is None:
            request.label = ("container", "token")
            return error_response(401, "Unauthorized", "missing Authorization header")
        if not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self._token):
            request.label = ("container", "token")
            return error_response(403, "AccessDenied", "invalid Authorization token")
        creds = self._store.get(self._spec)
        if creds is None:
            error = self._state.last_error
            reason = f"AssumeRole failed: {error}" if error else "no valid credentials are cached"
            return error_response(503, "CredentialsUnavailable",
                                  f"metadata-proxy has no valid credentials for {self._spec.role_arn}: {reason}")
        return web.Response(body=self._document(creds), content_type="application/json")
