"""Prometheus metrics (prometheus-client), in a registry of the daemon's own.

AssumeRole outcomes and tokens are prometheus_client counters and histograms, updated where they happen.
Requests are the hot path: the gate adds each one to the ledger (ledger.py) in plain numbers on the event loop
(no lock, no label lookup), and the requests, their latency and the refusals are summed from it into metric
families when Prometheus scrapes. The per-role gauges (seconds until the served credentials expire, time of
the last successful refresh) and the refreshes in flight are read from the refresher's state at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from metadata_proxy.ledger import BUCKETS, CONNECTION, Ledger
from metadata_proxy.refresher import Refresher, RoleState

STS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, ledger: Ledger) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tokens_issued = Counter("metadata_proxy_imds_tokens_issued", "IMDSv2 tokens issued", registry=r)
        self.tokens_rejected = Counter("metadata_proxy_imds_tokens_rejected",
                                       "IMDSv2 tokens presented that were invalid or expired", registry=r)
        self.assume_role = Counter("metadata_proxy_assume_role_calls",
                                   "AssumeRole calls, by role, outcome and STS error code",
                                   ["role", "outcome", "error_code"], registry=r)
        self.assume_role_latency = Histogram("metadata_proxy_assume_role_duration_seconds",
                                             "Time an AssumeRole call took, by role", ["role"],
                                             buckets=STS_BUCKETS, registry=r)

        r.register(RequestCollector(ledger))

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


class RequestCollector(Collector):
    """Requests by route and status, their latency by route, and refusals by reason, summed from the ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        answered: dict[tuple[str, int], int] = {}
        latency: dict[str, tuple[list[int], float]] = {}
        refused: dict[str, int] = {}
        for ((route, reason), status, _uid, _role), entry in list(self._ledger.entries.items()):
            if reason:
                refused[reason] = refused.get(reason, 0) + entry.count
            if status is CONNECTION:  # refused when it connected: no request was answered
                continue
            answered[route, status] = answered.get((route, status), 0) + entry.count
            buckets, seconds = latency.get(route) or ([0] * (len(BUCKETS) + 1), 0.0)
            latency[route] = ([a + b for a, b in zip(buckets, entry.buckets(), strict=True)], seconds + entry.seconds)
        requests = CounterMetricFamily("metadata_proxy_requests", "HTTP requests answered, by route and status",
                                       labels=["route", "status"])
        for (route, status), count in sorted(answered.items()):
            requests.add_metric([route, str(status)], count)
        yield requests
        histogram = HistogramMetricFamily("metadata_proxy_request_duration_seconds",
                                          "Time to answer a request, by route", labels=["route"])
        bounds = [*(str(bound) for bound in BUCKETS), "+Inf"]
        for route, (buckets, seconds) in sorted(latency.items()):
            histogram.add_metric([route], list(zip(bounds, accumulate(buckets), strict=True)), seconds)
        yield histogram
        refusals = CounterMetricFamily("metadata_proxy_requests_refused",
                                       "Requests refused, by reason (host, uid, token, method)", labels=["reason"])
        for reason, count in sorted(refused.items()):
            refusals.add_metric([reason], count)
        yield refusals


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
