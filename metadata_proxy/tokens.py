"""IMDSv2 session tokens: stateless, unforgeable, and valid for exactly the TTL the client asked for.

A token is base64url(expiry in ms | 8 random bytes | the first 26 bytes of an HMAC-SHA256 of both under a
per-process key): 42 bytes, 56 characters, the length of AWS's own IMDS tokens. The length is part of the
protocol in practice: the AWS Common Runtime (aws-c-auth's aws_imds_client.c, used by awscrt, Mountpoint for
Amazon S3 and the CRT-based SDK clients) copies the token into a 64-byte buffer that never grows, and a longer
token makes it fail before it asks for credentials. 26 bytes (208 bits) of MAC are far beyond guessing.

Nothing is stored, so a flood of PUTs costs no memory, a restart invalidates every token (clients simply fetch
another: they get 401 and retry, contract §4), and checking one is a length test, a decode and one HMAC
(skipped for a token already verified: Go and connection-reusing clients send the same token again and again).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable

MAX_TTL = 21600  # six hours, IMDS's own limit (contract §3.1)
_PAYLOAD = struct.Struct(">Q8s")  # expiry in ms since the epoch, nonce
_MAC_SIZE = 26  # 16 + 26 = 42 bytes: a multiple of 3, so the base64 has no padding and no unused bits
VERIFIED_MEMO = 4096  # verified tokens remembered, so a client reusing its token skips the HMAC
TOKEN_LENGTH = len(base64.urlsafe_b64encode(bytes(_PAYLOAD.size + _MAC_SIZE)))


def parse_ttl(value: str | None) -> int | None:
    """The TTL header as an int in 1..21600, or None when missing or invalid (the caller answers 400)."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    ttl = int(value)
    return ttl if 1 <= ttl <= MAX_TTL else None


class TokenAuthority:
    def __init__(self, time: Callable[[], float], key: bytes | None = None) -> None:
        self._time = time
        self._key = key or secrets.token_bytes(32)
        self._verified: dict[str | None, float] = {}  # token -> expiry (Unix time) of tokens whose MAC checked out

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_SIZE]

    def issue(self, ttl: int) -> str:
        expires_ms = int(self._time() * 1000) + ttl * 1000
        payload = _PAYLOAD.pack(expires_ms, secrets.token_bytes(8))
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode("ascii")

    def verify(self, token: str | None) -> bool:
        expires = self._verified.get(token)  # the common case: a token seen before (None never is)
        if expires is None:
            if token is None or len(token) != TOKEN_LENGTH or (expires_ms := self._check(token)) is None:
                return False
            if len(self._verified) >= VERIFIED_MEMO:  # only genuine tokens get here: a flood just resets it
                self._verified.clear()
            expires = self._verified[token] = expires_ms / 1000
        return self._time() < expires

    @property
    def remembered(self) -> int:
        """How many verified tokens are memoised (bounded by VERIFIED_MEMO)."""
        return len(self._verified)

    def _check(self, token: str) -> int | None:
        """The token's expiry if its MAC is ours, else None."""
        try:
            encoded = token.encode("ascii")
            raw = base64.urlsafe_b64decode(encoded)
        except (UnicodeEncodeError, binascii.Error, ValueError):
            return None
        # The decoder skips characters outside the alphabet and reads '+' and '/' like '-' and '_': only the
        # one spelling we issue may pass.
        if len(raw) != _PAYLOAD.size + _MAC_SIZE or base64.urlsafe_b64encode(raw) != encoded:
            return None
        payload, mac = raw[: _PAYLOAD.size], raw[_PAYLOAD.size:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        expires_ms, _nonce = _PAYLOAD.unpack(payload)
        return expires_ms
