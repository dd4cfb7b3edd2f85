"""What the benchmarks run on: the load generator (wrk), CPU pinning, and reading a process's memory.

Method: these machines' CPU speed swings within seconds, so runs made one after another are
not comparable. The product and a baseline run at the same time, both pinned to CPU 0, each loaded by its
own wrk pinned to CPU 1, for the same window; their ratio is what is reported, repeated and summarised by
median and spread. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

LUA = Path(__file__).resolve().parent / "lua"
SERVER_CPU, LOAD_CPU = "0", "1"
TOOLS = {"wrk": "wrk", "nginx": "nginx-light", "taskset": "util-linux"}


class ToolMissing(SystemExit):
    pass


def ensure_tools() -> None:
    """wrk, nginx and taskset from Debian's packages: installed when missing (as root), else one clear line."""
    missing = [name for name in TOOLS if not shutil.which(name)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ToolMissing(f"bench: missing {', '.join(missing)}: apt-get install {' '.join(TOOLS[m] for m in missing)}")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *(TOOLS[m] for m in missing)], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)


def pinned(cpu: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *command] if os.cpu_count() and os.cpu_count() > 1 else command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """For baselines that print no readiness line: poll until the port accepts (a benchmark, not a test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def script(*parts: str) -> str:
    """A wrk Lua script: the given parts, then the JSON report; returns its path."""
    text = "\n".join((LUA / f"{part}.lua").read_text() for part in (*parts, "report"))
    handle, path = tempfile.mkstemp(suffix=".lua", prefix="bench-")
    with os.fdopen(handle, "w") as file:
        file.write(text)
    return path


def wrk_command(url: str, connections: int, seconds: float, headers: dict[str, str] | None = None,
                lua: str | None = None, threads: int | None = None) -> list[str]:
    threads = threads or min(connections, 4)
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
               "--timeout", "5s", "-s", lua or script()]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    return pinned(LOAD_CPU, [*command, url])


def parse_wrk(output: str) -> dict:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError(f"wrk printed no report: {output[-500:]}")


def run_together(commands: list[list[str]]) -> list[dict]:
    """Starts every wrk at once (same window, same machine state) and returns their reports in order."""
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands]
    return [parse_wrk(p.communicate()[0]) for p in processes]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")
