"""An EC2 instance without AWS, to run inside a test's own network namespace (tests/support/netns.py):
moto with the scenario's world on 127.0.0.1, and a stub of the real IMDS on 169.254.169.254:80 and
[fd00:ec2::254]:80 whose instance profile is role-02 (IMDSv2 tokens required).

Run as `python -m tests.support.fake_instance` inside the namespace. It refuses to start unless the
namespace has no interface but `lo` and no default route. It prints one JSON line when ready
({"moto_url": ...}), then one JSON line per request the stub answers ({"method", "path", "status"} and the
tokens it issued), and stops when its stdin closes.
"""

from __future__ import annotations

import datetime
import json
import secrets
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moto.server import ThreadedMotoServer

from metadata_proxy import scenario
from tests.support.worlds import add_role_04

IMDS_V4, IMDS_V6 = "169.254.169.254", "fd00:ec2::254"
INSTANCE_ID = "i-0feedfacecafe0001"
USER_DATA = b"#!/bin/sh\necho user-data of the stub instance\n"
_print_lock = threading.Lock()


def report(record: dict[str, object]) -> None:
    with _print_lock:
        print(json.dumps(record), flush=True)


def isolation_problems() -> list[str]:
    """Checked from inside, with the namespace's own view (if_nameindex, /proc/net/*route)."""
    problems = [f"interface {name}" for _index, name in socket.if_nameindex() if name != "lo"]
    with open("/proc/net/route") as table:
        problems += ["an IPv4 default route" for line in table.readlines()[1:] if line.split()[1] == "00000000"]
    with open("/proc/net/ipv6_route") as table:
        problems += ["an IPv6 default route" for line in table
                     if line.split()[0] == "0" * 32 and line.split()[1] == "00" and line.split()[-1] != "lo"]
    return problems


def documents(source: scenario.SourceCredentials) -> dict[str, bytes]:
    now = datetime.datetime.now(datetime.UTC)
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    creds = {"Code": "Success", "LastUpdated": now.strftime(stamp), "Type": "AWS-HMAC",
             "AccessKeyId": source.access_key_id, "SecretAccessKey": source.secret_access_key,
             "Token": source.session_token, "Expiration": (now + datetime.timedelta(hours=1)).strftime(stamp)}
    identity = {"accountId": scenario.ACCOUNT_B, "instanceId": INSTANCE_ID, "region": scenario.REGION,
                "availabilityZone": scenario.REGION + "b", "instanceType": "m5.large"}
    return {
        "/latest/meta-data/": b"ami-id\niam/\nidentity-credentials/\ninstance-id\nplacement/",
        "/latest/meta-data/instance-id": INSTANCE_ID.encode(),
        "/latest/meta-data/placement/availability-zone": (scenario.REGION + "b").encode(),
        "/latest/meta-data/placement/region": scenario.REGION.encode(),
        "/latest/dynamic/instance-identity/document": json.dumps(identity).encode(),
        "/latest/user-data": USER_DATA,
        "/latest/meta-data/iam/info": json.dumps({"Code": "Success", "InstanceProfileArn":
                                                  f"arn:aws:iam::{scenario.ACCOUNT_B}:instance-profile/role-02"}).encode(),
        "/latest/meta-data/iam/security-credentials/": b"role-02",
        "/latest/meta-data/iam/security-credentials/role-02": json.dumps(creds).encode(),
        "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance": json.dumps(creds).encode(),
    }


def stub_handler(paths: dict[str, bytes]) -> type[BaseHTTPRequestHandler]:
    tokens: set[str] = set()

    class Stub(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            report({"method": self.command, "path": self.path, "status": status, "tokens": sorted(tokens)})

        def do_PUT(self) -> None:
            if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self._answer(400, b"")
            token = secrets.token_urlsafe(42)
            tokens.add(token)
            self._answer(200, token.encode())

        def do_GET(self) -> None:
            if self.headers.get("X-aws-ec2-metadata-token") not in tokens:
                return self._answer(401, b"")
            body = paths.get(self.path)
            self._answer(404, b"Not Found") if body is None else self._answer(200, body)

    return Stub


class V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def main() -> int:
    problems = isolation_problems()
    if problems:
        report({"error": f"refusing to play the IMDS: this network namespace has {', '.join(problems)}"})
        return 3
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    moto_url = f"http://{host}:{port}"
    source = scenario.build_world(moto_url)
    add_role_04(moto_url)
    handler = stub_handler(documents(source))
    servers = [ThreadingHTTPServer((IMDS_V4, 80), handler), V6Server((IMDS_V6, 80), handler)]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    report({"moto_url": moto_url})
    sys.stdin.read()  # until the test closes our stdin
    for server in servers:
        server.shutdown()
    moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
