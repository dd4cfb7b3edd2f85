"""The admin listener: /metrics for Prometheus, /healthz and /readyz for orchestrators.

It is a separate loopback port so that credential consumers and scrapers stay apart (a scraper never needs
the IMDS port, a workload never needs this one). Every answer comes from memory: never a call to STS.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from metadata_proxy.imds import normalize_path, text_response
from metadata_proxy.metrics import Metrics
from metadata_proxy.refresher import Refresher, RefreshPolicy
from metadata_proxy.request import GatedRequest

STALL = 5.0  # seconds without a heartbeat from the event loop before /healthz says it is stuck


def json_response(status: int, body: dict) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


class AdminRoutes:
    def __init__(self, metrics: Metrics, refresher: Refresher, now: Callable[[], float],
                 last_heartbeat: Callable[[], float], policy: RefreshPolicy | None = None) -> None:
        self._metrics = metrics
        self._refresher = refresher
        self._now = now
        self._last_heartbeat = last_heartbeat
        self._policy = policy or RefreshPolicy()

    async def __call__(self, request: GatedRequest) -> web.Response:
        path = normalize_path(request.raw_path)
        request.label = ("admin", "")
        if request.method not in ("GET", "HEAD"):
            request.label = ("admin", "method")
            return text_response(405, "Method Not Allowed", {"Allow": "GET, HEAD"})
        if path == "/metrics":
            return web.Response(body=generate_latest(self._metrics.registry),
                                headers={"Content-Type": CONTENT_TYPE_LATEST})
        if path == "/healthz":
            stalled = time.monotonic() - self._last_heartbeat()
            if stalled > STALL:
                return json_response(503, {"status": "stalled", "seconds_since_heartbeat": round(stalled, 1)})
            return json_response(200, {"status": "ok"})
        if path == "/readyz":
            return self._readiness()
        return text_response(404, "Not Found")

    def _readiness(self) -> web.Response:
        """Ready when every role has valid credentials with more than the floor left."""
        now = self._now()
        roles = {}
        for spec, state in list(self._refresher.states.items()):
            creds = self._refresher.store.get(spec)
            entry: dict[str, object] = {"ready": False}
            if creds is not None:
                floor = self._policy.floor_for(creds.lifetime)
                entry.update(expires_in=round(creds.expiration - now), floor=round(floor),
                             ready=creds.expiration - now > floor)
            if state.last_error is not None:
                entry["last_error"] = state.last_error.code
            roles[spec.role_arn] = entry
        ready = bool(roles) and all(entry["ready"] for entry in roles.values())
        return json_response(200 if ready else 503, {"ready": ready, "roles": roles})
