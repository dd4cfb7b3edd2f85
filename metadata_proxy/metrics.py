"""Prometheus metrics (prometheus-client), in a registry of the daemon's own.

Counters and histograms are updated where things happen (requests, AssumeRole outcomes, tokens); the
per-role gauges (seconds until the served credentials expire, time of the last successful refresh) and
the refreshes in flight are read from the refresher's state at scrape time, so they are never stale and
cost nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from metadata_proxy.cache import Refresher, RoleState

REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
STS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("metadata_proxy_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("metadata_proxy_request_duration_seconds", "Time to answer a request, by route",
                                 ["route"], buckets=REQUEST_BUCKETS, registry=r)
        self.refused = Counter("metadata_proxy_requests_refused",
                               "Requests refused, by reason (token, host, method)", ["reason"], registry=r)
        self.tokens_issued = Counter("metadata_proxy_imds_tokens_issued", "IMDSv2 tokens issued", registry=r)
        self.tokens_rejected = Counter("metadata_proxy_imds_tokens_rejected",
                                       "IMDSv2 tokens presented that were invalid or expired", registry=r)
        self.assume_role = Counter("metadata_proxy_assume_role_calls",
                                   "AssumeRole calls, by role, outcome and STS error code",
                                   ["role", "outcome", "error_code"], registry=r)
        self.assume_role_latency = Histogram("metadata_proxy_assume_role_duration_seconds",
                                             "Time an AssumeRole call took, by role", ["role"],
                                             buckets=STS_BUCKETS, registry=r)

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
            creds = self._refresher.cache.get(spec)
            if creds is not None:
                remaining.add_metric([spec.role_arn], creds.expiration - now)
            if state.last_success is not None:
                last.add_metric([spec.role_arn], state.last_success)
        yield remaining
        yield last
        yield GaugeMetricFamily("metadata_proxy_refreshes_in_flight", "AssumeRole calls under way",
                                value=self._refresher.in_flight)
