"""Real processes for the tests: the daemon as `python -m metadata_proxy`, and unmodified AWS clients.

Every process gets a scrubbed environment: no AWS_* variable but the ones a test names, empty config and
credential files, no HTTP proxy, and (for anything whose credential chain could end at the real IMDS)
AWS_EC2_METADATA_DISABLED=true, so no test ever sends a packet to 169.254.169.254.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from metadata_proxy import scenario

BIN = Path(sys.executable).parent
JS_DIR = Path(__file__).resolve().parent.parent / "js"
# What a client that has role-01 through the daemon sees as its identity.
ROLE_01_SESSION = re.compile(rf"^arn:aws:sts::{scenario.ACCOUNT_A}:assumed-role/role-01/[\w+=,.@-]+$")
# Prints the credential provider boto3's default chain chose, and the identity STS sees: python -c PROBE URL
BOTO3_PROBE = """
import json, sys, boto3
session = boto3.Session(region_name="us-east-1")
credentials = session.get_credentials()
identity = session.client("sts", endpoint_url=sys.argv[1]).get_caller_identity()
print(json.dumps({"method": credentials.method, "arn": identity["Arn"]}))
"""
# Credentials from the CRT's default chain, then the identity STS sees with them: python -c PROBE STS_URL
CRT_PROBE = """
import json, sys, boto3
from awscrt.auth import AwsCredentialsProvider
from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup
loop = EventLoopGroup(1)
provider = AwsCredentialsProvider.new_default_chain(ClientBootstrap(loop, DefaultHostResolver(loop)))
creds = provider.get_credentials().result(timeout=60)
sts = boto3.client("sts", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id=creds.access_key_id,
                   aws_secret_access_key=creds.secret_access_key, aws_session_token=creds.session_token)
print(json.dumps({"arn": sts.get_caller_identity()["Arn"], "expires": creds.expiration is not None}))
"""

READY_PREFIX = "export AWS_EC2_METADATA_SERVICE_ENDPOINT="
START_TIMEOUT = 120  # a safety net for a hung start, never an assertion about speed


def base_env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    empty = home / "empty-aws-file"
    empty.touch()
    return {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
    }


def daemon_env(home: Path, **extra: str) -> dict[str, str]:
    return {**base_env(home), "AWS_EC2_METADATA_DISABLED": "true", **extra}


def client_env(home: Path, **extra: str) -> dict[str, str]:
    return {**base_env(home), **extra}


class DaemonProcess:
    """`metadata-proxy serve` in a child process; ready when it prints the export line on stdout."""

    def __init__(self, args: list[str], env: dict[str, str], wrapper: tuple[str, ...] = (),
                 python: str = sys.executable) -> None:
        """wrapper: a command the daemon runs under, e.g. unshare for a network namespace."""
        self.proc = subprocess.Popen([*wrapper, python, "-m", "metadata_proxy", *args], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.stdout_lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_lines: list[str] = []
        self._stderr_changed = threading.Condition()
        self._readers = [threading.Thread(target=self._pump_stdout), threading.Thread(target=self._pump_stderr)]
        for reader in self._readers:
            reader.daemon = True
            reader.start()
        self.url: str | None = None
        self.exports: dict[str, list[str]] = {}
        self.stdout_seen: list[str] = []

    def _pump_stdout(self) -> None:
        for line in self.proc.stdout:
            self.stdout_lines.put(line.rstrip("\n"))
        self.stdout_lines.put(None)

    def _pump_stderr(self) -> None:
        for line in self.proc.stderr:
            with self._stderr_changed:
                self.stderr_lines.append(line.rstrip("\n"))
                self._stderr_changed.notify_all()

    def wait_for_stderr(self, text: str, timeout: float = START_TIMEOUT) -> bool:
        """Until a stderr line contains text (True), or timeout seconds pass (False)."""
        with self._stderr_changed:
            return self._stderr_changed.wait_for(lambda: any(text in line for line in self.stderr_lines), timeout)

    def _next_line(self) -> str | None:
        line = self.stdout_lines.get(timeout=START_TIMEOUT)
        if line is not None:
            self.stdout_seen.append(line)
        if line is not None and line.startswith("export "):
            name, value = line.removeprefix("export ").split("=", 1)
            self.exports.setdefault(name, []).append(value)
        return line

    def wait_ready(self) -> str | None:
        """The (first) IMDS endpoint URL, or None if the process ended without becoming ready."""
        while (line := self._next_line()) is not None:
            if line.startswith(READY_PREFIX):
                self.url = line[len(READY_PREFIX):]
                return self.url
        return None

    def export(self, name: str, index: int = 0) -> str:
        """The value of an announced `export NAME=...` line (the index-th, for several roles)."""
        while len(self.exports.get(name, [])) <= index:
            assert self._next_line() is not None, f"no export {name} #{index}: {self.stderr}"
        return self.exports[name][index]

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.wait()

    def wait(self) -> int:
        code = self.proc.wait(timeout=START_TIMEOUT)
        for reader in self._readers:
            reader.join(timeout=START_TIMEOUT)
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)


def run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=START_TIMEOUT,
                          stdin=subprocess.DEVNULL)


def aws(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real AWS CLI from PyPI, installed next to this interpreter."""
    return run([str(BIN / "aws"), *args], env)


def node() -> str | None:
    return shutil.which("node")
