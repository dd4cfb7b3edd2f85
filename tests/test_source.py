"""The daemon's own credential chain never reads the daemon (peers.md "self-reference loop")."""

from __future__ import annotations

import pytest

from metadata_proxy.source import drop_self_pointing, points_at


@pytest.mark.parametrize(("url", "host", "port", "expected"), [
    ("http://127.0.0.1:9254/", "127.0.0.1", 9254, True),
    ("http://localhost:9254", "127.0.0.1", 9254, True),
    ("http://127.0.0.2:9254/", "127.0.0.1", 9254, True),  # the whole loopback net reaches a loopback bind
    ("http://[::1]:9254/", "::1", 9254, True),
    ("http://127.0.0.1:9255/", "127.0.0.1", 9254, False),  # another daemon: chaining is allowed
    ("http://169.254.169.254/", "127.0.0.1", 80, False),  # a string only: no isolated netns needed
    ("http://10.1.2.3:9254/", "0.0.0.0", 9254, True),
    ("http://10.1.2.3:9254/", "10.1.2.4", 9254, False),
    ("http://127.0.0.1/", "127.0.0.1", 80, True),
    ("not a url", "127.0.0.1", 9254, False),
    ("http://127.0.0.1:notaport/", "127.0.0.1", 9254, False),
])
def test_points_at(url: str, host: str, port: int, expected: bool) -> None:
    assert points_at(url, host, port) is expected


def test_drop_self_pointing_keeps_everything_else() -> None:
    environ = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9254/",
               "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9254/creds",
               "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x",
               "AWS_PROFILE": "laptop"}
    assert drop_self_pointing(environ, "127.0.0.1", 9254) == ["AWS_EC2_METADATA_SERVICE_ENDPOINT",
                                                               "AWS_CONTAINER_CREDENTIALS_FULL_URI"]
    assert environ == {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x", "AWS_PROFILE": "laptop"}
