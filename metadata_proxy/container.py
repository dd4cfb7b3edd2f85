"""The container-credentials protocol (contract §7): what SDKs fetch from AWS_CONTAINER_CREDENTIALS_FULL_URI.

Safer than IMDS for sidecars: a consumer needs the role's token (sent verbatim as `Authorization`), not just
a network position. The token lives in a file the consumer reads through AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE;
the daemon reads it if the operator provided one, or creates it (mode 0600, no trailing newline: botocore
rejects a token with one).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Mapping

from aiohttp import web

from metadata_proxy.cache import CredentialCache, RoleState
from metadata_proxy.config import ConfigError
from metadata_proxy.credentials import Credentials, RoleSpec, format_time
from metadata_proxy.imds import LABEL

PATH_PREFIX = "/v1/credentials/"
MIN_TOKEN_LENGTH = 16


def container_path(name: str) -> str:
    return PATH_PREFIX + name


def default_token_dir(environ: Mapping[str, str]) -> str:
    """systemd's RuntimeDirectory, the user's runtime dir, /run for root, else a private dir in /tmp."""
    if environ.get("RUNTIME_DIRECTORY"):
        return environ["RUNTIME_DIRECTORY"].split(":")[0]
    if environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(environ["XDG_RUNTIME_DIR"], "metadata-proxy")
    if os.geteuid() == 0:
        return "/run/metadata-proxy"
    return os.path.join(tempfile.gettempdir(), f"metadata-proxy-{os.geteuid()}")


def ensure_private_dir(path: str) -> None:
    """Creates path as 0700, or accepts it if it is ours and not open to others (no symlink games in /tmp)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise ConfigError(f"token directory {path} must be owned by this user and not writable by others")


def check_token(token: str, source: str) -> str:
    if token != token.strip() or any(ch in token for ch in "\r\n"):
        raise ConfigError(f"{source}: the token has surrounding whitespace or a newline; clients send it "
                          "verbatim and botocore rejects it: write it without one (printf %s TOKEN > FILE)")
    if len(token) < MIN_TOKEN_LENGTH or not token.isascii() or not token.isprintable():
        raise ConfigError(f"{source}: the token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters")
    return token


def load_or_create_token(path: str) -> str:
    """The token in path; if there is no such file, a new random one written there with mode 0600."""
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        pass
    except OSError as error:
        raise ConfigError(f"cannot read container token file {path}: {error.strerror}") from None
    else:
        try:
            return check_token(raw.decode("ascii"), path)
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: the token must be printable ASCII") from None
    token = secrets.token_urlsafe(32)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".token-")  # mode 0600, O_EXCL
        with os.fdopen(fd, "w") as file:
            file.write(token)
        os.replace(temporary, path)
    except OSError as error:
        raise ConfigError(f"cannot write container token file {path}: {error.strerror}") from None
    return token


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """Both casings: Go reads code/message, JS reads Code/Message (contract §7.2)."""
    body = {"code": code, "message": message, "Code": code, "Message": message}
    return web.json_response(body, status=status, headers=headers)


class ContainerRoutes:
    """GET <path> with the right Authorization header answers the role's credentials as JSON."""

    def __init__(self, spec: RoleSpec, state: RoleState, cache: CredentialCache, token: str,
                 now: Callable[[], float]) -> None:
        self._spec = spec
        self._state = state
        self._cache = cache
        self._token = token.encode()
        self._now = now
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

    async def __call__(self, request: web.BaseRequest) -> web.Response:
        request[LABEL] = ("container", "")
        if request.method not in ("GET", "HEAD"):
            request[LABEL] = ("container", "method")
            return error_response(405, "MethodNotAllowed", "use GET", {"Allow": "GET, HEAD"})
        presented = request.headers.get("Authorization")
        if presented is None:
            request[LABEL] = ("container", "token")
            return error_response(401, "Unauthorized", "missing Authorization header")
        if not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self._token):
            request[LABEL] = ("container", "token")
            return error_response(403, "AccessDenied", "invalid Authorization token")
        creds = self._cache.get(self._spec)
        if creds is None:
            error = self._state.last_error
            reason = f"AssumeRole failed: {error}" if error else "no valid credentials are cached"
            return error_response(503, "CredentialsUnavailable",
                                  f"metadata-proxy has no valid credentials for {self._spec.role_arn}: {reason}")
        return web.Response(body=self._document(creds), content_type="application/json")
