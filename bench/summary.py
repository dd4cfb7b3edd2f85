"""Medians and spreads of the repeated windows in a results file, grouped as the tables show them."""

from __future__ import annotations

import statistics
from collections import defaultdict


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratios(rows: list[dict]) -> dict:
    """Median ratio and its spread over side-by-side windows, with the medians of the other figures."""
    values = [r["ratio"] for r in rows if r["ratio"] is not None]
    return {"ratio": median(values), "ratio_min": min(values, default=float("nan")),
            "ratio_max": max(values, default=float("nan")), "windows": len(rows),
            **{key: median([r[key] for r in rows]) for key in ("product_rps", "baseline_rps", "product_p50_ms",
                                                                "product_p99_ms", "baseline_p99_ms")},
            "errors": sum(r["errors"] for r in rows), "baseline_errors": sum(r["baseline_errors"] for r in rows)}


def throughput_summary(rows: list[dict]) -> dict[tuple[str, str, int], dict]:
    """(loop, baseline, connections) -> ratios() of its windows."""
    groups: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["loop"], row["baseline"], row["connections"])].append(row)
    return {key: ratios(group) for key, group in groups.items()}


def by_loop(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["loop"]].append(row)
    return dict(groups)
