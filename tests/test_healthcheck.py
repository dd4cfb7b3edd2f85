"""`metadata-proxy healthcheck` (the container's HEALTHCHECK, run every 30 s) is light: it loads none of the
daemon's libraries, whether the daemon is healthy or not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.net import free_port

HEAVY = ("boto3", "botocore", "aiohttp", "prometheus_client", "cachetools", "uvloop")


def healthcheck(url: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Runs the real command with -X importtime; returns it and the top-level packages it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "metadata_proxy", "healthcheck", "--url", url],
                            capture_output=True, text=True, timeout=60)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    return result, imported


@pytest.mark.timeout(120)
def test_a_healthy_daemon_is_checked_without_the_daemons_libraries(url: str) -> None:
    result, imported = healthcheck(url)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "metadata_proxy" in imported and "urllib" in imported  # the listing is real
    assert not imported & set(HEAVY)


def test_an_unreachable_daemon_is_one_line_and_exit_1_without_them() -> None:
    result, imported = healthcheck(f"http://127.0.0.1:{free_port()}/")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert len(lines) == 1 and lines[0].startswith("metadata-proxy: unhealthy: ")
    assert not imported & set(HEAVY)
