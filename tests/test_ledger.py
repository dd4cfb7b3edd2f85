"""The request ledger, and the metrics summed from it: exact counts, each latency in its bucket, a connection refused
before any request counted as a refusal but not as a request answered."""

from __future__ import annotations

import pytest

from metadata_proxy.ledger import Entry, Key, Ledger
from metadata_proxy.metrics import Metrics

pytestmark = pytest.mark.timeout(30)

ROLE = "arn:aws:iam::111111111111:role/role-01"
OTHER = "arn:aws:iam::111111111111:role/other"
START = 1_800_000_000.0


def test_an_entry_counts_each_latency_in_its_bucket_and_remembers_the_first_and_last_time() -> None:
    entry = Entry()
    for offset, seconds in enumerate([0.0001, 0.0005, 0.0006, 0.001, 1.0, 1.5]):
        entry.add(START + offset, seconds)
    # buckets: <=0.0005, <=0.001, <=0.0025, ..., <=1.0, +Inf (each on its own, not cumulative)
    assert entry.buckets() == [2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert entry.count == 6
    assert entry.seconds == pytest.approx(2.5022)
    assert (entry.first, entry.last) == (START, START + 5)


def test_a_new_key_is_announced_once_with_its_first_request_counted() -> None:
    ledger = Ledger()
    announced: list[tuple[Key, int]] = []
    ledger.on_new = lambda key, entry: announced.append((key, entry.count))
    key: Key = (("credentials", ""), 200, 1000, ROLE)
    for _ in range(3):
        ledger.add(key, START, 0.0001)
    ledger.add((("credentials", ""), 200, 1001, ROLE), START, 0.0001)
    assert announced == [(key, 1), ((("credentials", ""), 200, 1001, ROLE), 1)]
    assert ledger.entries[key].count == 3


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_the_metrics_sum_the_ledger_by_route_status_and_reason() -> None:
    ledger = Ledger()
    metrics = Metrics(ledger)
    for uid, role in ((1000, ROLE), (1001, ROLE), (1000, OTHER)):  # users and roles are not metric labels
        ledger.add((("credentials", ""), 200, uid, role), START, 0.0001)
    ledger.add((("credentials", "token"), 401, 1000, ROLE), START, 0.0001)
    ledger.add((("unknown", "host"), 403, 1000, None), START, 0.0001)
    ledger.add((("unknown", "uid"), None, 1002, ROLE), START, 0.0)  # a connection refused before any request
    ledger.add((("unknown", "uid"), None, 1002, ROLE), START, 0.0)
    assert sample(metrics, "metadata_proxy_requests_total", route="credentials", status="200") == 3
    assert sample(metrics, "metadata_proxy_requests_total", route="credentials", status="401") == 1
    assert sample(metrics, "metadata_proxy_requests_total", route="unknown", status="403") == 1
    assert sample(metrics, "metadata_proxy_requests_total", route="unknown", status="None") is None
    assert sample(metrics, "metadata_proxy_request_duration_seconds_count", route="credentials") == 4
    assert sample(metrics, "metadata_proxy_request_duration_seconds_count", route="unknown") == 1
    assert {reason: sample(metrics, "metadata_proxy_requests_refused_total", reason=reason)
            for reason in ("token", "host", "uid", "method")} == {"token": 1, "host": 1, "uid": 2, "method": None}
