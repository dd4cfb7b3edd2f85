"""`metadata-proxy demo`: the README's first command, offline."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def test_fresh_venv_without_then_with_the_demo_extra(tmp_path: Path) -> None:
    """The README's first command from nothing: a clean virtualenv with the package alone says which pip
    install the demo needs (one line); with the demo extra, `demo --check` passes."""
    venv = tmp_path / "venv"
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {**base_env(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
    installed = subprocess.run([*pip, str(root)], capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr[-2000:]
    demo = [str(venv / "bin" / "metadata-proxy"), "demo", "--check", "--port", "0"]
    without = subprocess.run(demo, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert without.returncode == 1
    (line,) = without.stderr.splitlines()
    assert "pip install 'metadata-proxy[demo]'" in line
    installed = subprocess.run([*pip, f"{root}[demo]"], capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr[-2000:]
    with_extra = subprocess.run(demo, env=env, capture_output=True, text=True, timeout=300,
                                stdin=subprocess.DEVNULL)
    assert with_extra.returncode == 0, with_extra.stdout + with_extra.stderr
    assert "Check passed" in with_extra.stdout


@pytest.mark.parametrize("moment", ["while moto starts", "while the role is assumed"])
def test_ctrl_c_before_the_demo_is_ready_is_quiet(tmp_path: Path, moment: str) -> None:
    """Ctrl-C at any moment before the check: one line at most, never a traceback."""
    env = {**base_env(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}
    demo = subprocess.Popen([sys.executable, "-m", "metadata_proxy", "demo", "--port", "0"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert demo.stdout is not None
        if moment == "while the role is assumed":
            assert demo.stdout.readline().startswith("AWS is played by moto")
        else:
            deadline = time.monotonic() + 60
            while "multidict" not in Path(f"/proc/{demo.pid}/maps").read_text():  # aiohttp is loading
                assert demo.poll() is None and time.monotonic() < deadline
                time.sleep(0.002)  # ok-sleep: polling /proc for a moment to signal at, not waiting for readiness
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=60)
    finally:
        demo.kill()
    assert demo.returncode in (0, 1, 130), err
    assert "Traceback" not in err and "Traceback" not in out
    assert len(err.strip().splitlines()) <= 1, err
