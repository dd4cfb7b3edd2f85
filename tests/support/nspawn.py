"""A minimal Debian 12 booted with its own systemd under systemd-nspawn, for the tests that need a real
service manager (readiness, reload, the watchdog, journald, restart rules).

Two things need the network and are prepared once, outside the tests, by `python3 -m tests.support.nspawn`
(which .ci/run calls): the debootstrapped tree, and a wheelhouse of the package's dependencies built on the
host for pip inside the container. Both live under CACHE and are keyed by what they were built from. The
tests themselves only talk to loopback: the container is booted with --private-network (nothing but `lo`),
and each boot starts from the cached tree under a throw-away overlay (--volatile=overlay), so the cache stays
pristine.

This module imports only the standard library: .ci/run runs it with the system python3 before any venv.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.support.notify import NotifySocket

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = ROOT / ".ci" / "cache"
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
# python3-cffi-backend must be named, or debootstrap's minbase resolution fails; sudo because the README's
# install commands use it; procps for /bin/kill, which the unit's ExecReload= runs (every standard Debian
# install has it, minbase does not).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "python3-cffi-backend", "sudo", "procps")
WHEELHOUSE_IN_CONTAINER = "/var/cache/wheelhouse"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 120  # safety nets for a hung boot or command, never assertions about speed
COMMAND_TIMEOUT = 300
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def rootfs_path(cache: Path = CACHE) -> Path:
    return cache / f"debian-{SUITE}-{_key(*PACKAGES)}"


def wheelhouse_path(cache: Path = CACHE) -> Path:
    """Keyed by the runtime dependencies and the build backend, so a changed one gets a fresh wheelhouse."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return cache / f"wheelhouse-{_key(*project['project']['dependencies'], *project['build-system']['requires'])}"


def missing(cache: Path = CACHE) -> str | None:
    """Why the prepared cache cannot be used, or None."""
    for path in (rootfs_path(cache), wheelhouse_path(cache)):
        if not (path / ".complete").exists():
            return f"{path} is not prepared: run `python3 -m tests.support.nspawn` as root (it needs the network)"
    return None


def _build(target: Path, fill: Callable[[Path], None]) -> None:
    """Fills a fresh directory and renames it into place only when complete: a half-built tree is never used."""
    if (target / ".complete").exists():
        return
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    partial.mkdir(parents=True)
    fill(partial)
    (partial / ".complete").touch()
    partial.rename(target)


def _debootstrap(tree: Path) -> None:
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(tree),
                    MIRROR], check=True, stdout=subprocess.DEVNULL)
    # A host name the container resolves itself, or sudo warns on every call.
    (tree / "etc" / "hostname").write_text("metadata-proxy-test\n")
    (tree / "etc" / "hosts").write_text("127.0.0.1 localhost metadata-proxy-test\n::1 localhost\n")
    # pip inside the container installs from the wheelhouse only (it has no network).
    (tree / "etc" / "pip.conf").write_text(f"[global]\nno-index = true\nfind-links = {WHEELHOUSE_IN_CONTAINER}\n")


def _wheelhouse(directory: Path) -> None:
    """Wheels of every dependency and of the build backend; the container is Debian 12's CPython 3.11 too."""
    with tempfile.TemporaryDirectory() as venv:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([f"{venv}/bin/pip", "wheel", "-q", "--wheel-dir", str(directory), str(ROOT),
                        "setuptools>=77", "wheel"], check=True)
    for own in directory.glob("metadata_proxy-*.whl"):
        own.unlink()  # the README installs the checkout itself


def prepare(cache: Path = CACHE) -> None:
    _build(rootfs_path(cache), _debootstrap)
    _build(wheelhouse_path(cache), _wheelhouse)


def in_network_namespace(pid: int, work: Callable[[], T]) -> T:
    """Runs work in a thread that has joined pid's network namespace. Sockets it opens live there, and the
    threads it starts inherit the namespace, so servers started here are reachable only from inside."""
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/proc/{pid}/ns/net") as namespace:
                if libc.setns(namespace.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            result.append(work())
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


class Container:
    """The cached tree booted with --private-network under a throw-away overlay; commands run in it via
    nsenter. --keep-unit and --register=no let nspawn run where systemd is not PID 1 (a CI machine's
    container or VM)."""

    def __init__(self, rootfs: Path, log: Path, binds: dict[Path, str], read_only: dict[Path, str]) -> None:
        self.log_path = log
        self._log = log.open("wb")
        argv = ["systemd-nspawn", "--quiet", "--keep-unit", "--register=no", "--boot", "--private-network",
                "--volatile=overlay", "--console=read-only", "--notify-ready=yes", f"--directory={rootfs}"]
        argv += [f"--bind={host}:{inside}" for host, inside in binds.items()]
        argv += [f"--bind-ro={host}:{inside}" for host, inside in read_only.items()]
        # nspawn tells its supervisor the container's PID 1, then READY=1 once the container's systemd is up.
        notify = NotifySocket(log.parent)
        self.nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "NOTIFY_SOCKET": notify.path})
        try:
            self.leader = int(notify.wait_for("X_NSPAWN_LEADER_PID")["X_NSPAWN_LEADER_PID"])
            notify.wait_for("READY", "1")
        except BaseException:
            self.shut_down()
            raise RuntimeError(f"the container did not boot: see {log}") from None
        finally:
            notify.close()
        state = self.run("systemctl is-system-running --wait", timeout=BOOT_TIMEOUT).stdout.strip()
        if state not in ("running", "degraded"):
            raise RuntimeError(f"the container did not boot ({state}): see {log}")

    def _argv(self, command: str) -> list[str]:
        return ["nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup",
                "--root", "--wd", "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", "HOME=/root",
                "bash", "-c", command]

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """A bash command inside the container, as root, with a clean environment."""
        return subprocess.run(self._argv(command), capture_output=True, text=True, timeout=timeout, input=stdin)

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        result = self.run(f"install -D -m {mode} /dev/stdin {path}", stdin=text)
        assert result.returncode == 0, result.stderr

    def follow(self, command: str, predicate: Callable[[str], bool]) -> Callable[[], str]:
        """Starts command (e.g. `journalctl -f`) now; the returned function blocks until a line of its output
        satisfies predicate, returns that line and ends the command."""
        process = self.start(command)

        def wait() -> str:
            try:
                for line in process.stdout:
                    if predicate(line):
                        return line.rstrip("\n")
                raise AssertionError(f"{command} ended without the line: {process.stderr.read()}")
            finally:
                process.kill()
                process.wait()

        return wait

    def start(self, command: str) -> subprocess.Popen[str]:
        """Like run, without waiting (for a command that blocks until the test lets it go on)."""
        return subprocess.Popen(self._argv(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def in_network(self, work: Callable[[], T]) -> T:
        return in_network_namespace(self.leader, work)

    def shut_down(self) -> int:
        """SIGTERM makes nspawn ask the container's systemd for an orderly shutdown."""
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
        try:
            code = self.nspawn.wait(timeout=BOOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.nspawn.kill()
            code = self.nspawn.wait()
        self._log.close()
        return code


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("tests.support.nspawn: debootstrap needs root")
    prepare(Path(sys.argv[1]) if len(sys.argv) > 1 else CACHE)
