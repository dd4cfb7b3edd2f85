"""PNG plots of a results file: throughput ratio and p99 by connections against the aiohttp baselines (one
panel pair per event loop; nginx and moto, measured at one connection count, are in the tables), and resident
memory over requests served."""

from __future__ import annotations

from pathlib import Path

from .summary import throughput_summary


def draw(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = throughput_summary(results["throughput"])
    loops = sorted({loop for loop, _, _ in summary})
    figure, axes = plt.subplots(len(loops), 2, figsize=(11, 4 * len(loops)), squeeze=False)
    for (ratio_axis, latency_axis), loop in zip(axes, loops, strict=True):
        baselines = sorted({b for lp, b, _ in summary if lp == loop and b.startswith("aiohttp")})
        for baseline in baselines:
            points = sorted((c, s) for (lp, b, c), s in summary.items() if lp == loop and b == baseline)
            xs = [c for c, _ in points]
            ratio_axis.plot(xs, [s["ratio"] for _, s in points], marker="o", label=f"vs {baseline}")
            latency_axis.plot(xs, [s["baseline_p99_ms"] for _, s in points], marker="x", linestyle="--",
                              label=f"{baseline} p99")
        points = sorted((c, s) for (lp, b, c), s in summary.items() if lp == loop and b == "aiohttp web.Application")
        latency_axis.plot([c for c, _ in points], [s["product_p99_ms"] for _, s in points], marker="o",
                          color="black", label="metadata-proxy p99")
        for axis in (ratio_axis, latency_axis):
            axis.set_xscale("log", base=2)
            axis.set_xlabel("connections")
            axis.set_title(f"{loop} on both sides", fontsize=9)
            axis.legend(fontsize=7)
        ratio_axis.axhline(1.0, color="grey", linewidth=0.8)
        ratio_axis.set_ylabel("metadata-proxy req/s ÷ baseline req/s")
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
