"""Coverage-guided fuzzing (atheris) of what a request goes through: the gate (Host check, access log,
metrics) and the IMDS and container routes, driven without a network.

Invariants: no exception escapes, no status >= 500, and the credential document's secret appears only in
a 200 answer to a request that carried the valid IMDSv2 token or the container token.
    python tests/fuzz_atheris.py -runs=1000000        # a longer hunt; CI runs a few thousand
"""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import atheris

with atheris.instrument_imports():
    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    from metadata_proxy.addresses import container_path
    from metadata_proxy.audit import AuditTrail
    from metadata_proxy.container import ContainerRoutes
    from metadata_proxy.gate import HostCheck, guarded
    from metadata_proxy.imds import ImdsRoutes, InstanceIdentity
    from metadata_proxy.ledger import Ledger
    from metadata_proxy.metrics import Metrics
    from metadata_proxy.model import Credentials, RoleSpec
    from metadata_proxy.refresher import RoleState
    from metadata_proxy.request import UNCLAIMED
    from metadata_proxy.routes import with_container_route
    from metadata_proxy.store import CredentialStore
    from metadata_proxy.tokens import TokenAuthority


class Clock:
    def time(self) -> float:
        return time.time()


SECRET = "fuzz-secret-access-key-0123456789"
SPEC = RoleSpec(role_arn="arn:aws:iam::111111110001:role/role-01", session_name="fuzz")
CLOCK = Clock()
CACHE = CredentialStore(CLOCK)
CACHE.put(SPEC, Credentials("ASIAFUZZ", SECRET, "fuzz-session-token", time.time() + 3600, time.time(),
                            "arn:aws:sts::111111110001:assumed-role/role-01/fuzz"))
TOKENS = TokenAuthority(CLOCK.time)
VALID = TOKENS.issue(21600)
CONTAINER_TOKEN = "fuzz-container-token-0123456789"
LEDGER = Ledger()
METRICS = Metrics(LEDGER)
IDENTITY = InstanceIdentity("i-0123456789abcdef0", "us-east-1", "us-east-1a", "111111110001", time.time())
STATE = RoleState(SPEC)
ROUTES = with_container_route(container_path("role-01"),
                              ContainerRoutes(SPEC, STATE, CACHE, CONTAINER_TOKEN),
                              ImdsRoutes(SPEC, STATE, CACHE, TOKENS, IDENTITY, METRICS, require_token=True,
                                         now=CLOCK.time))
AUDIT = AuditTrail(LEDGER)
GATE = guarded(SimpleNamespace(routes=ROUTES, allowed=None, audit_role=SPEC.role_arn), HostCheck("127.0.0.1"),
               LEDGER)
METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS"]
HEADERS = ["Host", "X-aws-ec2-metadata-token", "X-aws-ec2-metadata-token-ttl-seconds", "X-Forwarded-For",
           "Authorization", "Accept"]


def run(coroutine):
    """The handlers never wait on anything, so one step runs them to the end."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("a handler awaited something")


def test_one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    method = METHODS[fdp.ConsumeIntInRange(0, len(METHODS) - 1)] if fdp.ConsumeBool() else fdp.ConsumeUnicode(8)
    path = "/" + fdp.ConsumeUnicodeNoSurrogates(80)
    headers = CIMultiDict()
    granted = False
    for _ in range(fdp.ConsumeIntInRange(0, 5)):
        name = HEADERS[fdp.ConsumeIntInRange(0, len(HEADERS) - 1)]
        choice = fdp.ConsumeIntInRange(0, 3)
        value = {0: VALID, 1: CONTAINER_TOKEN}.get(choice) or fdp.ConsumeUnicodeNoSurrogates(40)
        value = value.replace("\r", "").replace("\n", "")
        headers.add(name, value)
        granted |= (name == "X-aws-ec2-metadata-token" and value == VALID) or (
            name == "Authorization" and value == CONTAINER_TOKEN)
    try:
        request = make_mocked_request(method, path, headers=headers)
    except (ValueError, UnicodeError):
        return  # not a request aiohttp's parser would ever produce
    request.uid, request.label, request.served_role = None, UNCLAIMED, None  # what a GatedRequest starts with
    response = run(GATE(request))
    AUDIT.flush()  # what the trail writes of the ledger the gate just added to
    assert response.status < 500, (method, path, response.status)
    body = response.body or b""
    if SECRET.encode() in body:
        assert response.status == 200 and granted, (method, path, dict(headers))


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
