"""CI's smoke of the benchmarks and the soak: they run, their output is well formed, every verdict is computed
(never its value: speed is not asserted here), and docs/performance.md is what the committed results give."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import goals, report

ROOT = Path(__file__).resolve().parent.parent
PERF = ROOT / "docs" / "perf"
GOALS = {f"{loop}: {what}" for loop in ("asyncio", "uvloop")
         for what in ("vs web.Application", "p99", "vs web.Server", "--allow-uid", "flood")} | {
    "healthcheck", "fetches", "cold clients", "cold clients served", "per hour", "memory"}
BASELINES = {"aiohttp web.Application", "aiohttp web.Server", "nginx static file", "moto IMDS route"}


def run(module: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
    return subprocess.run([sys.executable, "-m", module, "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def check_provenance(record: dict) -> None:
    assert re.fullmatch(r"[0-9a-f]{40}", record["commit"]) and isinstance(record["dirty"], bool)
    assert datetime.datetime.fromisoformat(record["date"]).tzinfo is not None


@pytest.mark.timeout(600)
def test_bench_smoke(tmp_path: Path) -> None:
    if os.geteuid() != 0 and not all(shutil.which(t) for t in ("wrk", "nginx", "taskset")):
        pytest.skip("the benchmark needs wrk, nginx and taskset (installed by CI)")
    result = run("bench", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    check_provenance(results["provenance"])
    assert results["settings"]["loops"] == ["asyncio", "uvloop"]

    products = [r for r in results["runs"] if r["server"].startswith("metadata-proxy")]
    assert products and all(r["log_level"] == "info" and r["log_level_is_default"] for r in products)
    assert all(r["flags"][r["flags"].index("--event-loop") + 1] == r["event_loop"] for r in products)
    assert {r["event_loop"] for r in products} == {"asyncio", "uvloop"}
    runs = {r["id"]: r for r in results["runs"]}
    for row in results["throughput"]:  # each side of a window ran on the loop the row names
        assert runs[row["product_run"]]["event_loop"] == row["loop"]
        if row["baseline"].startswith("aiohttp"):
            assert runs[row["baseline_run"]]["event_loop"] == row["loop"]
        assert row["product_rps"] > 0 and row["baseline_rps"] > 0
    for loop in ("asyncio", "uvloop"):
        assert {r["baseline"] for r in results["throughput"] if r["loop"] == loop} == BASELINES
    gated = [runs[r["product_run"]]["flags"] for r in results["allow_uid_close"]]
    assert all(flags[flags.index("--allow-uid") + 1] == str(os.getuid()) for flags in gated)
    assert all(r["idle_connections"] == 1000 for r in results["allow_uid_close"])
    assert [r["loop"] for r in results["flood"]] == ["asyncio", "uvloop"]
    assert all(r["requests"] > 0 and r["log_lines"] >= 0 for r in results["flood"])
    assert results["healthcheck"]["exit_status"] == 0
    assert results["cold_clients"]["succeeded"] == results["cold_clients"]["clients"]

    verdicts = {v["goal"]: v for v in results["verdicts"]}
    assert set(verdicts) == GOALS
    for v in verdicts.values():  # computed from what was measured, whatever the outcome
        assert isinstance(v["met"], bool), v
        assert v["met"] == (v["measured"] >= v["limit"] if v["comparison"] == ">=" else v["measured"] <= v["limit"])
    assert verdicts == {v["goal"]: v for v in goals.verdicts(results)}

    markdown = (tmp_path / "results.md").read_text()
    assert markdown.startswith("# Benchmark results") and "| uvloop | aiohttp web.Server | 32 |" in markdown
    for plot in ("throughput.png", "memory.png"):
        assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG")


def test_verdicts_follow_the_targets() -> None:
    """A ratio just under its target is not met, one at it is; a loop not measured is not a pass."""
    def window(ratio: float, p99: float, baseline: str = "aiohttp web.Application") -> dict:
        return {"loop": "asyncio", "baseline": baseline, "connections": 32, "ratio": ratio, "product_p99_ms": p99}

    results = {"throughput": [window(0.99, 10.0), window(1.2, 10.0), window(1.0, 10.5),
                              window(0.85, 1.0, "aiohttp web.Server")],
               "flood": [{"loop": "asyncio", "seconds": 10, "requests": 50_000, "log_lines": 37}]}
    verdicts = {v["goal"]: v for v in goals.verdicts(results)}
    assert verdicts["asyncio: vs web.Application"]["measured"] == 1.0
    assert verdicts["asyncio: vs web.Application"]["met"] is True
    assert verdicts["asyncio: p99"]["met"] is True  # the median p99 of the windows: 10.0 ms
    assert verdicts["asyncio: vs web.Server"]["met"] is True
    assert verdicts["asyncio: flood"]["met"] is False  # 37 lines: one more than three dozen
    assert verdicts["uvloop: vs web.Application"]["met"] is None
    assert verdicts["healthcheck"]["met"] is None
    results["throughput"][1].update(ratio=0.98, product_p99_ms=10.5)  # medians 0.99x and 10.5 ms
    verdicts = {v["goal"]: v for v in goals.verdicts(results)}
    assert verdicts["asyncio: vs web.Application"]["met"] is False
    assert verdicts["asyncio: p99"]["met"] is False


def test_docs_are_generated_from_the_committed_results(tmp_path: Path) -> None:
    """docs/performance.md and the README's performance paragraph are exactly what `python -m bench.report`
    makes of docs/perf/results.json and docs/perf/soak.json: no figure in them is typed by hand."""
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    docs = tmp_path / "performance.md"
    result = subprocess.run([sys.executable, "-m", "bench.report", "--docs", str(docs), "--readme", str(readme),
                             "--plots", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert docs.read_text() == (ROOT / "docs" / "performance.md").read_text()
    assert readme.read_text() == (ROOT / "README.md").read_text()
    results = json.loads((PERF / "results.json").read_text())
    check_provenance(results["provenance"])
    check_provenance(json.loads((PERF / "soak.json").read_text())["provenance"])
    assert report.readme_summary(results) in readme.read_text()
    assert not results["settings"]["smoke"]


@pytest.mark.timeout(300)
def test_soak_smoke(tmp_path: Path) -> None:
    """Every verdict of the soak must hold, on any machine: the soak's clock stands still while STS is being
    called and documents are judged by when they were asked for, so a slow machine cannot fail it."""
    result = run("bench.soak", tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report_ = json.loads((tmp_path / "soak.json").read_text())
    check_provenance(report_["provenance"])
    assert set(report_["passed"]) == {
        "no failed client request outside the long outage", "no expired or blank credentials, ever",
        "clients were served in every phase", "error document during the long outage",
        "bounded STS retry rate (<= 120 calls per outage hour)", "resumed within one backoff step of STS returning"}
    assert all(report_["passed"].values()), report_["passed"]
    assert report_["refreshes"] >= 5 and report_["tallies"]["phase 2: long outage"]["error_documents"] > 0
    assert "soak:" in result.stdout
