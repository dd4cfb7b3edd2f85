"""Prometheus metrics (prometheus-client), in a registry of the daemon's own.

AssumeRole outcomes and tokens are prometheus_client counters and histograms, updated where they happen.
The per-request counter and latency histogram are the hot path, so requests are tallied in plain
integers on the event loop (no lock, no label lookup) and handed to prometheus_client as metric families
when it scrapes. The per-role gauges (seconds until the served credentials expire, time of the last
successful refresh) and the refreshes in flight are read from the refresher's state at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from metadata_proxy.refresher import Refresher, RoleState

REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
STS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.refused = Counter("metadata_proxy_requests_refused",
                               "Requests refused, by reason (host, uid, token, method)", ["reason"], registry=r)
        self.tokens_issued = Counter("metadata_proxy_imds_tokens_issued", "IMDSv2 tokens issued", registry=r)
        self.tokens_rejected = Counter("metadata_proxy_imds_tokens_rejected",
                                       "IMDSv2 tokens presented that were invalid or expired", registry=r)
        self.assume_role = Counter("metadata_proxy_assume_role_calls",
                                   "AssumeRole calls, by role, outcome and STS error code",
                                   ["role", "outcome", "error_code"], registry=r)
        self.assume_role_latency = Histogram("metadata_proxy_assume_role_duration_seconds",
                                             "Time an AssumeRole call took, by role", ["role"],
                                             buckets=STS_BUCKETS, registry=r)

        self.requests = RequestTally()
        r.register(self.requests)

    def record_assume_role(self, state: RoleState, seconds: float) -> None:
        """The refresher's outcome hook."""
        role = state.spec.role_arn
        if state.last_error is None:
            self.assume_role.labels(role, "success", "").inc()
        else:
            self.assume_role.labels(role, "failure", state.last_error.code).inc()
        self.assume_role_latency.labels(role).observe(seconds)

    def watch(self, refresher: Refresher, now: Callable[[], float]) -> None:
        self.registry.register(RefresherCollector(refresher, now))


class RouteTally:
    """One route's requests: a count per status, a count per latency bucket (the last one +Inf), their sum."""

    __slots__ = ("buckets", "seconds", "statuses")

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.buckets = [0] * (len(REQUEST_BUCKETS) + 1)
        self.seconds = 0.0


class RequestTally(Collector):
    """Requests by route and status, and their latency by route, kept as plain numbers between scrapes."""

    FIRST_BUCKET = REQUEST_BUCKETS[0]

    def __init__(self) -> None:
        self._routes: dict[str, RouteTally] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        tally = self._routes.get(route)
        if tally is None:
            tally = self._routes[route] = RouteTally()
        statuses = tally.statuses
        statuses[status] = statuses.get(status, 0) + 1
        # (almost every answer falls in the first bucket: one comparison instead of a search)
        tally.buckets[0 if seconds <= self.FIRST_BUCKET else bisect_left(REQUEST_BUCKETS, seconds)] += 1
        tally.seconds += seconds

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        routes = sorted(self._routes.items())
        requests = CounterMetricFamily("metadata_proxy_requests", "HTTP requests answered, by route and status",
                                       labels=["route", "status"])
        for route, tally in routes:
            for status, count in sorted(tally.statuses.items()):
                requests.add_metric([route, str(status)], count)
        yield requests
        latency = HistogramMetricFamily("metadata_proxy_request_duration_seconds",
                                        "Time to answer a request, by route", labels=["route"])
        bounds = [*(str(bound) for bound in REQUEST_BUCKETS), "+Inf"]
        for route, tally in routes:
            cumulative = list(accumulate(tally.buckets))
            latency.add_metric([route], list(zip(bounds, cumulative, strict=True)), tally.seconds)
        yield latency


class RefresherCollector(Collector):
    def __init__(self, refresher: Refresher, now: Callable[[], float]) -> None:
        self._refresher = refresher
        self._now = now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        remaining = GaugeMetricFamily("metadata_proxy_credentials_expiry_seconds",
                                      "Seconds until the credentials served for a role expire (absent: none valid)",
                                      labels=["role"])
        last = GaugeMetricFamily("metadata_proxy_last_refresh_timestamp_seconds",
                                 "Unix time of the last successful AssumeRole, by role", labels=["role"])
        now = self._now()
        for spec, state in list(self._refresher.states.items()):
            creds = self._refresher.store.get(spec)
            if creds is not None:
                remaining.add_metric([spec.role_arn], creds.expiration - now)
            if state.last_success is not None:
                last.add_metric([spec.role_arn], state.last_success)
        yield remaining
        yield last
        yield GaugeMetricFamily("metadata_proxy_refreshes_in_flight", "AssumeRole calls under way",
                                value=self._refresher.in_flight)
