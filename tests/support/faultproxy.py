"""An HTTP proxy in front of moto that counts STS actions and injects the failures moto cannot produce.

Throttling, 5xx, connection resets, hangs, cross-account denials and spoiled answers come from here, per action and in
order (`fail_next`) or until cleared (`outage`). `hold` parks matching requests until the test releases
them, which makes "a refresh is in flight" a state a test can stand in without sleeping.
The client's Host header is forwarded unchanged, or moto's SigV4 check would fail.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

STS_ERROR = ('<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>{kind}</Type>'
             "<Code>{code}</Code><Message>{message}</Message></Error><RequestId>fault-proxy</RequestId>"
             "</ErrorResponse>")
ERRORS = {
    "throttle": (400, "Sender", "Throttling", "Rate exceeded"),
    "500": (500, "Receiver", "InternalFailure", "injected internal failure"),
    "503": (503, "Receiver", "ServiceUnavailable", "injected outage"),
    "denied": (403, "Sender", "AccessDenied",
               "User: arn:aws:sts::111111110002:assumed-role/role-02/i-0 is not authorized to perform: "
               "sts:AssumeRole on resource: arn:aws:iam::111111110001:role/role-01"),
}
# Answers moto would never give: STS's own success answer, forwarded with one field spoiled.
MANGLES = {
    "arn-without-account": (re.compile(rb"<Arn>arn:aws:sts::\d{12}:assumed-role/"),
                            b"<Arn>arn:aws:sts:::assumed-role/"),
    "blank-secret": (re.compile(rb"<SecretAccessKey>[^<]*</SecretAccessKey>"),
                     b"<SecretAccessKey></SecretAccessKey>"),
}
FAULTS = (*ERRORS, *MANGLES, "reset", "hang")


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.calls: Counter[str] = Counter()
        self._queued: dict[str, list[str]] = {}
        self._outage: dict[tuple[str, str | None], str] = {}
        self.bodies: list[dict[str, list[str]]] = []  # every request's form parameters, in order
        self.latency = 0.0  # seconds added before every forwarded request (the benchmarks' slow STS)
        self._holds: dict[str, threading.Event] = {}
        self._released = threading.Event()  # ends every hang (at reset or stop)
        self._changed = threading.Condition()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_DELETE = do_HEAD = do_POST

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        for gate in self._holds.values():
            gate.set()
        self._server.shutdown()
        self._server.server_close()

    # --- what tests call ---
    def fail_next(self, action: str, *faults: str) -> None:
        assert all(f in FAULTS for f in faults), faults
        with self._changed:
            self._queued.setdefault(action, []).extend(faults)

    def outage(self, action: str, fault: str | None, role_arn: str | None = None) -> None:
        """Every matching request (of that role, if given) fails with fault until outage(action, None, ...)."""
        with self._changed:
            if fault is None:
                self._outage.pop((action, role_arn), None)
            else:
                self._outage[(action, role_arn)] = fault

    def hold(self, action: str) -> threading.Event:
        """Parks matching requests (after counting them) until the returned event is set."""
        gate = threading.Event()
        self._holds[action] = gate
        return gate

    def calls_from(self, action: str, session_name: str) -> int:
        """Calls of action made under one RoleSessionName: one daemon's, whatever else shares this proxy."""
        with self._changed:
            return sum(1 for body in self.bodies
                       if body.get("Action") == [action] and body.get("RoleSessionName") == [session_name])

    def wait_for_calls(self, action: str, count: int, timeout: float = 60) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.calls[action] >= count, timeout)

    def reset(self) -> None:
        with self._changed:
            self.calls.clear()
            self.bodies.clear()
            self.latency = 0.0
            self._queued.clear()
            self._outage.clear()
        for gate in self._holds.values():
            gate.set()
        self._holds.clear()
        self._released.set()
        self._released = threading.Event()

    # --- the proxy itself ---
    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        params = parse_qs(body.decode("latin-1"))
        action = (params.get("Action") or ["other"])[0]
        role_arn = (params.get("RoleArn") or [None])[0]
        with self._changed:
            self.calls[action] += 1
            self.bodies.append(params)
            queued = self._queued.get(action)
            fault = queued.pop(0) if queued else (self._outage.get((action, role_arn))
                                                  or self._outage.get((action, None)))
            self._changed.notify_all()
        gate = self._holds.get(action)
        if gate is not None:
            gate.wait(120)
        if fault in ERRORS:
            status, kind, code, message = ERRORS[fault]
            self._reply(request, status, STS_ERROR.format(kind=kind, code=code, message=message).encode(),
                        {"Content-Type": "text/xml"})
        elif fault in ("reset", "hang"):
            if fault == "hang":
                self._released.wait(120)
            self._reset(request)
        else:
            if self.latency:
                time.sleep(self.latency)  # ok-sleep: this is the simulated network, not a test waiting
            self._forward(request, body, MANGLES.get(fault or ""))

    def _forward(self, request: BaseHTTPRequestHandler, body: bytes,
                 mangle: tuple[re.Pattern[bytes], bytes] | None = None) -> None:
        upstream = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            # Host stays the client's (http.client keeps an explicit Host header), so SigV4 still verifies.
            upstream.request(request.command, request.path, body=body, headers=dict(request.headers.items()))
            response = upstream.getresponse()
            payload = response.read()
            if mangle is not None:
                payload = mangle[0].sub(mangle[1], payload)
            headers = {k: v for k, v in response.getheaders()
                       if k.lower() not in ("transfer-encoding", "connection", "content-length")}
            self._reply(request, response.status, payload, headers)
        finally:
            upstream.close()

    @staticmethod
    def _reply(request: BaseHTTPRequestHandler, status: int, payload: bytes, headers: dict[str, str]) -> None:
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)

    @staticmethod
    def _reset(request: BaseHTTPRequestHandler) -> None:
        """Closes with RST (SO_LINGER 0), as a dropped connection looks to the client."""
        request.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.close_connection = True
        request.connection.close()
