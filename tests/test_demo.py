"""`metadata-proxy demo`: the README's first command, offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.processes import base_env


def test_demo_check_passes(tmp_path: Path) -> None:
    env = {**base_env(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}
    result = subprocess.run([sys.executable, "-m", "metadata_proxy", "demo", "--check", "--port", "0"], env=env,
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "AccessDenied" in result.stdout
    assert "37 Hello.txt" in result.stdout and "87 hello.html" in result.stdout
    assert "Check passed" in result.stdout
    assert "Traceback" not in result.stderr


def test_demo_without_moto_says_what_to_install(tmp_path: Path) -> None:
    """Without the demo extra: one line naming the pip install to run."""
    blocker = tmp_path / "no_moto"
    (blocker / "moto").mkdir(parents=True)
    (blocker / "moto" / "__init__.py").write_text("raise ImportError('moto is not installed')\n")
    env = {**base_env(tmp_path), "AWS_EC2_METADATA_DISABLED": "true", "PYTHONPATH": str(blocker)}
    result = subprocess.run([sys.executable, "-m", "metadata_proxy", "demo", "--check", "--port", "0"], env=env,
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "pip install 'metadata-proxy[demo]'" in line
