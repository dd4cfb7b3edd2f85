"""The instance's own metadata, fetched from the real IMDS for the transparent endpoint.

Intercepted processes can no longer reach the real IMDS, so the transparent endpoint forwards what they could
read before (instance-id, placement, the identity document, user-data, ...) with the daemon's own IMDSv2
token. The credentials of the instance's role never leave the daemon: every `meta-data/iam/...` and
`meta-data/identity-credentials/...` path (of any version, in any case) is refused here, and only plain
paths are forwarded (no `%`, no `.` or `..` segment), so no other spelling can reach them either.

This is the one place where a request waits on I/O: bounded by a timeout, a size cap and a cap on
concurrent upstream connections; what never changes over an instance's life is answered from memory.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

import aiohttp
import cachetools
from aiohttp import web

from metadata_proxy.imds import TOKEN_HEADER, TOKEN_PATH, TTL_HEADER, text_response
from metadata_proxy.intercept import IMDS_V4
from metadata_proxy.request import GatedRequest

log = logging.getLogger("metadata_proxy")

REAL_IMDS = f"http://{IMDS_V4}"
PLAIN_PATH = re.compile(r"(/[A-Za-z0-9_,:=+@-][A-Za-z0-9_.,:=+@-]*)*/?")  # no segment starts with "."
# Any segment that starts like the credential trees, in any version or case: never forwarded.
SECRET = re.compile(r"/(iam|identity-credentials)", re.IGNORECASE)
IMMUTABLE = re.compile(r"/[^/]+/(meta-data/(ami-id|instance-id|instance-type|mac|placement/.*)"
                       r"|dynamic/instance-identity/.*)")
TIMEOUT = aiohttp.ClientTimeout(total=3)  # the real IMDS answers in milliseconds
MAX_BODY = 256 * 1024  # user-data is at most 16 KiB; nothing larger is metadata
MAX_UPSTREAM = 8  # concurrent connections to the real IMDS
TOKEN_TTL = 21600
CACHED_PATHS = 256


def forwardable(path: str) -> bool:
    """A normalised path that may go to the real IMDS."""
    return PLAIN_PATH.fullmatch(path) is not None and SECRET.search(path) is None


class RealImds:
    """A client of the real IMDS holding the daemon's own IMDSv2 token, with the immutable paths cached."""

    def __init__(self, base: str = REAL_IMDS, now: Callable[[], float] = time.monotonic,
                 timeout: aiohttp.ClientTimeout = TIMEOUT) -> None:
        self._base = base
        self._now = now
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._token: tuple[str, float] | None = None  # (token, when to fetch a new one)
        self._token_lock = asyncio.Lock()
        self._cache: cachetools.LRUCache[str, tuple[int, bytes, str]] = cachetools.LRUCache(CACHED_PATHS)

    async def __call__(self, request: GatedRequest, path: str) -> web.Response:
        """The fallback of the transparent endpoint's IMDS routes (the IMDSv2 token is already checked)."""
        request.label = ("passthrough", "")
        if not forwardable(path):
            return text_response(404, "Not Found")
        try:
            status, body, content_type = await self.get(path)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.warning("the real instance metadata service did not answer %s: %s", path, type(error).__name__)
            return text_response(502, "Bad Gateway: the instance metadata service did not answer")
        return web.Response(status=status, body=body, content_type=content_type)

    async def get(self, path: str) -> tuple[int, bytes, str]:
        cached = self._cache.get(path)
        if cached is not None:
            return cached
        answer = await self._get(path, await self._current_token())
        if answer[0] == 401:  # our token expired early (the real IMDS restarted, say): once more with a new one
            self._token = None
            answer = await self._get(path, await self._current_token())
        if answer[0] == 200 and IMMUTABLE.fullmatch(path):
            self._cache[path] = answer
        return answer

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=MAX_UPSTREAM), trust_env=False)
        return self._session

    async def _current_token(self) -> str:
        async with self._token_lock:
            if self._token is None or self._now() >= self._token[1]:
                async with self._client().put(self._base + TOKEN_PATH, headers={TTL_HEADER: str(TOKEN_TTL)}) as reply:
                    if reply.status != 200:
                        raise ValueError(f"token request answered {reply.status}")
                    self._token = (await reply.text(), self._now() + TOKEN_TTL - 60)
            return self._token[0]

    async def _get(self, path: str, token: str) -> tuple[int, bytes, str]:
        async with self._client().get(self._base + path, headers={TOKEN_HEADER: token},
                                      allow_redirects=False) as reply:
            body = bytearray()
            async for chunk in reply.content.iter_chunked(64 * 1024):  # read() may stop short of the whole body
                body += chunk
                if len(body) > MAX_BODY:
                    raise ValueError(f"answer larger than {MAX_BODY} bytes")
            return reply.status, bytes(body), reply.content_type or "text/plain"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
