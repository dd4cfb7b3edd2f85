"""Byte-exact HTTP requests: the path is sent as written (`//latest/...`, `%2e%2e`), as real clients do."""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urlsplit


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def request(url: str, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> Reply:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.msg, response.read())
    finally:
        conn.close()


def token(url: str, ttl: str = "21600") -> str:
    reply = request(url, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": ttl})
    assert reply.status == 200, reply
    return reply.text


def get(url: str, path: str, tok: str | None = None, headers: dict[str, str] | None = None) -> Reply:
    sent = dict(headers or {})
    if tok is not None:
        sent["X-aws-ec2-metadata-token"] = tok
    return request(url, "GET", path, sent)
