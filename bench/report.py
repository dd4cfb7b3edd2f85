"""Markdown from results files: results.md next to a run's results.json, and, as a command, the generated
docs/performance.md and the performance paragraph of the README.

    python -m bench.report          # docs/perf/results.json + docs/perf/soak.json -> docs/performance.md, README,
                                    # and the plots next to results.json

Every figure written here is read from a results file; the prose around them holds none of its own.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import textwrap
from pathlib import Path

from . import plots, report_text
from .load import HEADLINE_CONNECTIONS
from .provenance import describe
from .summary import by_loop, median, ratios, throughput_summary

ROOT = Path(__file__).resolve().parent.parent
README_BLOCK = re.compile(r"(<!-- bench-summary -->\n).*?(<!-- /bench-summary -->)", re.S)


def num(value: float | None, spec: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def ratio(s: dict) -> str:
    return f"{num(s['ratio'], '.2f')}x [{num(s['ratio_min'], '.2f')}-{num(s['ratio_max'], '.2f')}]"


def table(header: list[str], rows: list[list[str]], right_from: int = 1, left: tuple[int, ...] = ()) -> list[str]:
    """A Markdown table; columns from `right_from` on are right-aligned (figures), but those in `left`."""
    align = ["---" if i < right_from or i in left else "---:" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def figure(value: float | None) -> str:
    """A measured figure as the targets state theirs: whole numbers without decimals."""
    return num(value, ",.0f" if value is not None and float(value).is_integer() else ",.2f")


def listed(values: list) -> str:
    return ", ".join(map(str, values)) or "none"


def verdict_section(results: dict) -> list[str]:
    rows = []
    for v in results["verdicts"]:
        state = {True: "met", False: "**not met**", None: "not measured"}[v["met"]]
        conditions = "; ".join(f"{k.replace('_', ' ')}: {listed(val) if isinstance(val, list) else val}"
                               for k, val in v["conditions"].items())
        rows.append([v["target"], figure(v["measured"]), f"{v['comparison']} {figure(v['limit'])}", state,
                     conditions])
    return ["## Targets", "", *table(["target", "measured", "limit", "verdict", "conditions"], rows, 1, (3, 4))]


def throughput_section(results: dict) -> list[str]:
    rows = [[loop, baseline, str(c), num(s["product_rps"]), num(s["baseline_rps"]), ratio(s),
             num(s["product_p50_ms"], ".2f"), num(s["product_p99_ms"], ".2f"), num(s["baseline_p99_ms"], ".2f"),
             f"{s['errors']}/{s['baseline_errors']}"]
            for (loop, baseline, c), s in sorted(throughput_summary(results["throughput"]).items())]
    lines = ["## Cached-credentials GET, side by side with each baseline on the same event loop", "",
             *table(["event loop", "baseline", "connections", "metadata-proxy req/s", "baseline req/s", "ratio",
                     "p50 ms", "p99 ms", "baseline p99 ms", "errors (ours/theirs)"], rows, 2)]
    if results.get("loop_against_loop"):
        s = ratios(results["loop_against_loop"])
        lines += [f"metadata-proxy on uvloop against metadata-proxy on asyncio, side by side at "
                  f"{results['loop_against_loop'][0]['connections']} connections: {ratio(s)} "
                  f"({num(s['product_rps'])} vs {num(s['baseline_rps'])} req/s).", ""]
    return lines


def allow_uid_section(results: dict) -> list[str]:
    rows = []
    for loop, group in sorted(by_loop(results["allow_uid_close"]).items()):
        s = ratios(group)
        rows.append([loop, num(group[0]["idle_connections"]), num(median([r["socket_table_rows"] for r in group])),
                     num(s["product_rps"]), num(s["baseline_rps"]), ratio(s), num(s["product_p99_ms"], ".2f"),
                     f"{s['errors']}/{s['baseline_errors']}"])
    return ["## A new connection per request, with and without `--allow-uid`, in a crowded socket table", "",
            *table(["event loop", "idle connections held", "socket table rows", "with --allow-uid req/s",
                    "without req/s", "ratio", "p99 ms with", "errors (with/without)"], rows)]


def flood_section(results: dict) -> list[str]:
    rows = [[r["loop"], num(r["seconds"], ".0f"), str(r["connections"]), num(r["requests"]), num(r["rps"]),
             str(r["log_lines"])] for r in results["flood"]]
    return ["## Log volume under a flood (default log level, wrk at full speed against the product alone)", "",
            *table(["event loop", "seconds", "connections", "requests", "req/s", "log lines written"], rows)]


def other_sections(results: dict) -> list[str]:
    lines = ["## Full IMDSv2 fetches (token PUT, role GET, credentials GET; 8 connections, the product alone)", "",
             *table(["event loop", "fetches/s", "p99 ms", "errors"],
                    [[loop, num(median([r["fetches_per_s"] for r in g])), num(median([r["p99_ms"] for r in g]), ".2f"),
                      str(sum(r["errors"] for r in g))] for loop, g in sorted(by_loop(results["fetches"]).items())])]
    cold, hours = results["cold_clients"], results["simulated_hours"]
    lines += ["## STS economy", "", *table(["measurement", "result"], [
        [f"AssumeRole calls for {num(cold['clients'])} concurrent cold clients ({num(cold['succeeded'])} served)",
         str(cold["assume_role_calls"])],
        [f"AssumeRole calls per hour over {hours['simulated_hours']} simulated hours (busiest hour)",
         f"{num(hours['per_hour'], '.2f')} ({hours['busiest_hour']})"]])]
    by_latency: dict[float, list[dict]] = {}
    for row in results["startup"]:
        by_latency.setdefault(row["sts_latency_ms"], []).append(row)
    lines += ["## Start-up (process start to serving, and to READY=1)", "",
              *table(["STS latency", "to serving, median s", "to READY=1, median s", "runs"],
                     [[f"{latency:.0f} ms", num(median([r["to_serving_s"] for r in rows]), ".3f"),
                       num(median([r["to_ready_s"] for r in rows]), ".3f"), str(len(rows))]
                      for latency, rows in sorted(by_latency.items())], 0)]
    lines += ["## Memory", "", *table(["requests served", "RSS MB"],
                                      [[num(r["requests"]), num(r["rss_mb"], ".1f")] for r in results["memory"]], 0)]
    cli, health = results["aws_cli"], results["healthcheck"]
    lines += ["## `aws s3 ls` end to end", "",
              f"Through the daemon {num(cli['through_daemon']['median'], '.3f')} s, with the same credentials as "
              f"static keys in the environment {num(cli['static_env']['median'], '.3f')} s (medians of "
              f"{cli['static_env']['n']}).", "",
              "## `metadata-proxy healthcheck`", "",
              f"Exit status {health['exit_status']}; of {', '.join(health['watched'])} it imports "
              f"{', '.join(health['imported']) or 'none'}; CPU time per check "
              f"{num(health['cpu_s']['median'], '.3f')} s "
              f"(median of {health['cpu_s']['n']}).", ""]
    return lines


def sections(results: dict) -> list[str]:
    return [*verdict_section(results), *throughput_section(results), *allow_uid_section(results),
            *flood_section(results), *other_sections(results)]


def runs_table(results: dict) -> list[str]:
    rows = [[str(r["id"]), r["server"], r["event_loop"] or "", r.get("log_level", ""),
             "`" + " ".join(r.get("flags") or r.get("command", [])) + "`", str(r.get("log_lines", ""))]
            for r in results["runs"]]
    return ["## Servers started", "", *table(["run", "server", "event loop", "log level", "flags", "log lines"],
                                             rows, 5)]


def results_markdown(results: dict) -> str:
    return "\n".join(["# Benchmark results", "", describe(results["provenance"]), "", *sections(results),
                      *runs_table(results)])


def readme_summary(results: dict) -> str:
    """The README's performance paragraph, every figure from the results."""
    headline = throughput_summary(results["throughput"])
    parts = []
    for loop in results["settings"]["loops"]:
        s = headline.get((loop, "aiohttp web.Application", HEADLINE_CONNECTIONS))
        if s:
            parts.append(f"{num(s['ratio'], '.2f')}x a bare aiohttp handler on {loop} (p99 "
                         f"{num(s['product_p99_ms'], '.1f')} ms)")
    fetches = median([r["fetches_per_s"] for r in results["fetches"]])
    cold, (before, after) = results["cold_clients"], results["memory"][-2:]
    text = (f"Performance (measured by `python -m bench`, see [docs/performance.md](docs/performance.md)): with "
            f"its default flags, at {HEADLINE_CONNECTIONS} connections side by side, the cached-credentials path "
            f"answers at {' and '.join(parts)}; {num(fetches)} full IMDSv2 fetches a second; "
            f"{cold['assume_role_calls']} AssumeRole call(s) for {num(cold['clients'])} concurrent cold clients "
            f"({num(cold['succeeded'])} of them served); "
            f"{num(after['rss_mb'] - before['rss_mb'], '.1f')} MB of memory growth between "
            f"{num(before['requests'])} and {num(after['requests'])} requests.")
    if results.get("loop_against_loop"):
        text += (f" On uvloop (the `fast` extra, used when installed) it serves "
                 f"{num(ratios(results['loop_against_loop'])['ratio'], '.2f')}x what it serves on asyncio.")
    return textwrap.fill(text, 110, break_on_hyphens=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "docs/perf/results.json")
    parser.add_argument("--soak", type=Path, default=ROOT / "docs/perf/soak.json")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs/performance.md")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--plots", type=Path, default=None, help="where to draw the plots (default: by --results)")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    soak = json.loads(args.soak.read_text())
    body = [describe(results["provenance"]), "", *sections(results)]
    args.docs.write_text(report_text.performance_md(results, soak, "\n".join(body)))
    plots.draw(results, args.plots or args.results.parent)
    readme = args.readme.read_text()
    if not README_BLOCK.search(readme):
        raise SystemExit(f"bench.report: {args.readme} has no <!-- bench-summary --> block")
    args.readme.write_text(README_BLOCK.sub(lambda m: m[1] + readme_summary(results) + m[2], readme))
    print(f"bench.report: wrote {args.docs} and the summary in {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
