"""Property tests of the whole HTTP surface with hypothesis, over raw sockets against a running daemon.

Whatever a client sends (odd methods, paths with `..`, `%2e`, `//`, NUL and unicode, huge or duplicate
headers, bad TTLs, tokens and Host headers), the daemon answers below 500, keeps running, serves
credentials only to a request that carried a valid token, and never puts a credential into an error.

CI runs the "ci" hypothesis profile (fixed seed, bounded budget); for a longer hunt:
    HYPOTHESIS_PROFILE=long python -m pytest tests/test_fuzz.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metadata_proxy.gate import HostCheck
from metadata_proxy.imds import normalize_path
from tests.conftest import World, launch
from tests.support.http import get, token
from tests.support.processes import DaemonProcess

settings.register_profile("ci", max_examples=300, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=20000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@dataclass(frozen=True)
class Target:
    process: DaemonProcess
    port: int
    token: str  # a valid IMDSv2 token
    container_token: str
    secrets: tuple[str, ...]  # what must never leak: the served keys and session token


@pytest.fixture(scope="module")
def target(session_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    home = tmp_path_factory.mktemp("fuzz")
    process = launch(session_world, home, "--container-credentials", "--container-token-file", str(home / "t"))
    url = process.wait_ready()
    assert url, process.stderr
    tok = token(url)
    doc = json.loads(get(url, "/latest/meta-data/iam/security-credentials/role-01", tok).body)
    yield Target(process, int(url.rstrip("/").rsplit(":", 1)[1]), tok, (home / "t").read_text(),
                 (doc["SecretAccessKey"], doc["Token"], doc["AccessKeyId"]))
    assert process.stop() == 0
    assert "Traceback" not in process.stderr and "internal error" not in process.stderr


def exchange(port: int, raw: bytes) -> tuple[int | None, bytes]:
    """Sends raw bytes, reads until the server closes; (status or None, whole response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    if response.startswith(b"HTTP/1."):
        return int(response.split(b" ", 2)[1]), response
    return None, response


SEGMENTS = st.sampled_from(["latest", "meta-data", "iam", "security-credentials", "security-credentials-extended",
                            "role-01", "role-02", "api", "token", "..", ".", "%2e%2e", "%2E", "", "dynamic",
                            "instance-identity", "document", "v1", "credentials", "user-data", "%00", "\u00e9",
                            "\u2603", "%2f", "?x=1", "#frag", ";param", "2021-03-23"])
PATHS = st.one_of(
    st.lists(SEGMENTS, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    st.lists(SEGMENTS, max_size=8).map(lambda parts: "//" + "//".join(parts) + "/"),
    st.text(max_size=60).map(lambda text: "/" + text),
    st.sampled_from(["*", "http://127.0.0.1/latest/meta-data/", "latest/meta-data", ""]),
)
METHODS = st.one_of(
    st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "TRACE", "get", "PUt"]),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ-_!", min_size=1, max_size=12))
HEADER_VALUES = st.one_of(st.text(alphabet=st.characters(blacklist_characters="\r\n"), max_size=40),
                          st.sampled_from(["0", "1", "21600", "21601", "-1", "1e3", "", " ", "300"]),
                          st.integers(0, 9000).map(lambda n: "x" * n))


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]], str, str]:
    """(method, path, headers, token choice, host choice)."""
    names = st.sampled_from(["X-aws-ec2-metadata-token-ttl-seconds", "X-Forwarded-For", "Accept", "User-Agent",
                             "X-aws-ec2-metadata-token", "Authorization", "X-Junk", "Origin", "Cookie"])
    headers = draw(st.lists(st.tuples(names, HEADER_VALUES), max_size=6))
    return (draw(METHODS), draw(PATHS), headers, draw(st.sampled_from(["valid", "none", "forged", "twice"])),
            draw(st.sampled_from(["ok", "localhost", "evil.example", "none", "127.0.0.1:1\x00", "[::1]"])))


def build(target: Target, method: str, path: str, headers: list[tuple[str, str]], token_choice: str,
          host: str) -> tuple[bytes, bool]:
    """The request bytes, and whether it carries a credential-granting token (IMDS or container)."""
    lines = [f"{method} {path} HTTP/1.1"]
    hosts = {"ok": f"127.0.0.1:{target.port}", "localhost": "localhost", "evil.example": "evil.example",
             "127.0.0.1:1\x00": "127.0.0.1:1\x00", "[::1]": "[::1]"}
    if host in hosts:
        lines.append(f"Host: {hosts[host]}")
    tokens = {"valid": [target.token], "forged": [target.token[:-3] + "AAA"], "twice": ["junk", target.token]}
    lines += [f"X-aws-ec2-metadata-token: {t}" for t in tokens.get(token_choice, [])]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("Connection: close")
    granted = any(t == target.token for t in tokens.get(token_choice, [])) or any(
        name.lower() == "authorization" and value == target.container_token for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape"), granted


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(requests())
def test_hostile_requests_never_5xx_crash_or_leak(target: Target, request_parts) -> None:
    raw, granted = build(target, *request_parts)
    status, response = exchange(target.port, raw)
    assert status is None or status < 500, response[:300]
    leaked = [secret for secret in target.secrets if secret.encode() in response]
    if leaked:
        assert status == 200 and granted, response[:300]
    assert target.process.proc.poll() is None


def test_a_container_token_request_alone_is_the_only_other_way_in(target: Target) -> None:
    """The generator above never holds the container token; this is the one positive case for it."""
    raw = (f"GET /v1/credentials/role-01 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {target.container_token}\r\n"
           "Connection: close\r\n\r\n").encode()
    status, response = exchange(target.port, raw)
    assert status == 200 and target.secrets[0].encode() in response


def test_still_serving_after_the_fuzzing(target: Target) -> None:
    url = f"http://127.0.0.1:{target.port}/"
    assert get(url, "/latest/meta-data/iam/security-credentials/", token(url)).text == "role-01"


@given(st.text(max_size=200))
def test_normalize_path_is_idempotent_and_root_based(path: str) -> None:
    once = normalize_path("/" + path)
    assert normalize_path(once) == once
    assert once.startswith("/") and "//" not in once and (once == "/" or not once.endswith("/"))


@given(st.text(max_size=80))
def test_host_check_accepts_only_loopback_names(host: str) -> None:
    check = HostCheck("127.0.0.1")
    if check.allows(host):
        name = host.strip().lower()
        assert "localhost" in name or any(ch.isdigit() for ch in name) or ":" in name


ATHERIS_HARNESS = Path(__file__).parent / "fuzz_atheris.py"


def test_atheris_harness_runs_a_bounded_budget() -> None:
    """Coverage-guided fuzzing of the request gate and routes (no network), a few thousand runs in CI.
    For longer: python tests/fuzz_atheris.py -runs=1000000"""
    pytest.importorskip("atheris")
    result = subprocess.run([sys.executable, str(ATHERIS_HARNESS), "-runs=3000", "-seed=1"], capture_output=True,
                            text=True, timeout=600, cwd=ATHERIS_HARNESS.parent.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 3000 runs" in result.stderr
