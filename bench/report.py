"""Turns results.json into the Markdown tables of docs/performance.md and PNG plots."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

TARGETS = {"ratio_vs_aiohttp_32": 1.0, "p99_ms_32": 10.0, "fetches_per_s": 3000, "close_rps": 3000,
           "cold_assume_role_calls": 1, "per_hour": 3, "rss_growth_mb": 5.0}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def throughput_summary(rows: list[dict]) -> dict[tuple[str, int], dict]:
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["baseline"], row["connections"])].append(row)
    summary = {}
    for key, group in groups.items():
        ratios = [r["ratio"] for r in group if r["ratio"]]
        summary[key] = {"ratio": _median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                        "product_rps": _median([r["product_rps"] for r in group]),
                        "baseline_rps": _median([r["baseline_rps"] for r in group]),
                        "product_p50_ms": _median([r["product_p50_ms"] for r in group]),
                        "product_p99_ms": _median([r["product_p99_ms"] for r in group]),
                        "baseline_p99_ms": _median([r["baseline_p99_ms"] for r in group]),
                        "errors": sum(r["errors"] for r in group)}
    return summary


def markdown(results: dict) -> str:
    lines = ["# Benchmark results", "",
             f"Machine: {results['machine']['cpus']} CPUs, Python {results['machine']['python']}; servers pinned "
             f"to CPU {results['machine']['server_cpu']}, load generators to CPU {results['machine']['load_cpu']}. "
             f"{results['settings']['repeats']} window(s) of {results['settings']['seconds']} s per cell; "
             "medians, with the spread of the ratio in brackets.", "",
             "## Cached credentials GET, side by side with each baseline", "",
             "| baseline | connections | metadata-proxy req/s | baseline req/s | ratio | p50 ms | p99 ms | "
             "baseline p99 ms | errors |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (baseline, connections), s in sorted(throughput_summary(results["throughput"]).items()):
        lines.append(f"| {baseline} | {connections} | {s['product_rps']:,.0f} | {s['baseline_rps']:,.0f} | "
                     f"{s['ratio']:.2f}x [{s['ratio_min']:.2f}-{s['ratio_max']:.2f}] | {s['product_p50_ms']:.2f} | "
                     f"{s['product_p99_ms']:.2f} | {s['baseline_p99_ms']:.2f} | {s['errors']} |")
    fetches = results["fetches"]
    sequence = _median([r["fetches_per_s"] for r in fetches["sequence"]])
    close = fetches["connection_close"]
    lines += ["", "## Full IMDSv2 fetches and fresh connections", "",
              "| measurement | result | target |", "| --- | ---: | ---: |",
              f"| full fetches/s (PUT token + GET role + GET credentials, 8 connections) | {sequence:,.0f} | "
              f">= {TARGETS['fetches_per_s']:,} |",
              f"| req/s with `Connection: close`, 32 connections | {_median([r['product_rps'] for r in close]):,.0f} "
              f"({_median([r['ratio'] for r in close]):.2f}x aiohttp's) | >= {TARGETS['close_rps']:,} |"]
    cold, hours = results["cold_clients"], results["simulated_hours"]
    lines += ["", "## STS economy", "", "| measurement | result | target |", "| --- | ---: | ---: |",
              f"| AssumeRole calls for {cold['clients']:,} concurrent cold clients ({cold['succeeded']:,} served) | "
              f"{cold['assume_role_calls']} | {TARGETS['cold_assume_role_calls']} |",
              f"| AssumeRole calls per hour over {hours['simulated_hours']} simulated hours (busiest hour) | "
              f"{hours['per_hour']:.2f} ({hours['busiest_hour']}) | <= {TARGETS['per_hour']} |"]
    lines += ["", "## Start-up (process start to serving, and to READY=1)", "",
              "| STS latency | to serving, median s | to READY=1, median s |", "| ---: | ---: | ---: |"]
    by_latency: dict[float, list[dict]] = defaultdict(list)
    for row in results["startup"]:
        by_latency[row["sts_latency_ms"]].append(row)
    for latency, rows in sorted(by_latency.items()):
        lines.append(f"| {latency:.0f} ms | {_median([r['to_serving_s'] for r in rows]):.3f} | "
                     f"{_median([r['to_ready_s'] for r in rows]):.3f} |")
    memory = results["memory"]
    lines += ["", "## Memory", "", "| requests served | RSS MB |", "| ---: | ---: |"]
    lines += [f"| {row['requests']:,} | {row['rss_mb']:.1f} |" for row in memory]
    lines.append(f"\nGrowth between the last two checkpoints: {memory[-1]['rss_mb'] - memory[-2]['rss_mb']:.2f} MB "
                 f"(target < {TARGETS['rss_growth_mb']} MB).")
    cli = results["aws_cli"]
    lines += ["", "## `aws s3 ls` end to end", "",
              f"Through the daemon {cli['through_daemon']['median']:.3f} s, with static keys in the environment "
              f"{cli['static_env']['median']:.3f} s (medians of {cli['static_env']['n']}): the daemon adds "
              f"{cli['difference_s'] * 1000:.0f} ms, the CLI's own start-up dominates.", ""]
    return "\n".join(lines)


def plots(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = throughput_summary(results["throughput"])
    baselines = sorted({b for b, _ in summary})
    figure, (ratio_axis, latency_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for baseline in baselines:
        points = sorted((c, s) for (b, c), s in summary.items() if b == baseline)
        xs = [c for c, _ in points]
        ratio_axis.plot(xs, [s["ratio"] for _, s in points], marker="o", label=f"vs {baseline}")
        latency_axis.plot(xs, [s["baseline_p99_ms"] for _, s in points], marker="x", linestyle="--",
                          label=f"{baseline} p99")
    points = sorted((c, s) for (b, c), s in summary.items() if b == baselines[0])
    latency_axis.plot([c for c, _ in points], [s["product_p99_ms"] for _, s in points], marker="o", color="black",
                      label="metadata-proxy p99")
    for axis in (ratio_axis, latency_axis):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("connections")
        axis.legend(fontsize=8)
    ratio_axis.axhline(1.0, color="grey", linewidth=0.8)
    ratio_axis.set_ylabel("metadata-proxy req/s ÷ baseline req/s (same window)")
    latency_axis.set_ylabel("p99 latency, ms")
    latency_axis.set_yscale("log")
    figure.tight_layout()
    figure.savefig(out / "throughput.png", dpi=110)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    memory = results["memory"]
    axis.plot([r["requests"] for r in memory], [r["rss_mb"] for r in memory], marker="o")
    axis.set_xlabel("requests served")
    axis.set_ylabel("resident memory, MB")
    axis.set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(out / "memory.png", dpi=110)
    plt.close(figure)
