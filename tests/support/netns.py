"""A network namespace of the test's own, where 169.254.169.254 may exist.

Created with `ip netns add` under a unique name and deleted afterwards. Before the first packet it is checked
to be isolated: no interface but `lo`, no default route (IPv4 or IPv6); otherwise the test stops. Only then
are the IMDS addresses added to its `lo`. Processes enter it with nsenter (and become another user with
setpriv); nothing here touches the machine's own namespace.
"""

from __future__ import annotations

import os
import pwd
import secrets
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

IMDS_ADDRESSES = ("169.254.169.254/32", "fd00:ec2::254/128")
TIMEOUT = 120


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"ip {' '.join(args)}: {result.stderr}"
    return result.stdout


class Namespace:
    def __init__(self) -> None:
        self.name = f"mp-test-{os.getpid()}-{secrets.token_hex(4)}"
        self.path = f"/run/netns/{self.name}"

    def __enter__(self) -> Namespace:
        _ip("netns", "add", self.name)
        try:
            self.assert_isolated()
            _ip("-n", self.name, "link", "set", "lo", "up")
            self.assert_isolated()
            for address in IMDS_ADDRESSES:
                _ip("-n", self.name, "addr", "add", address, "dev", "lo")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        _ip("netns", "delete", self.name)

    def assert_isolated(self) -> None:
        """Only `lo`, and no default route in either family: nothing can leave this namespace."""
        links = [line.split(":")[1].strip().split("@")[0] for line in _ip("-n", self.name, "-o", "link").splitlines()]
        assert links == ["lo"], f"namespace {self.name} is not isolated: interfaces {links}"
        for family in ("-4", "-6"):
            default = _ip("-n", self.name, family, "route", "show", "default").strip()
            assert not default, f"namespace {self.name} has a default route ({family}): {default}"

    def command(self, args: Sequence[str], user: str | None = None) -> list[str]:
        """args run inside the namespace, as `user` if given (uid, gid, no supplementary groups)."""
        prefix = ["nsenter", f"--net={self.path}", "--"]
        if user is not None:
            account = pwd.getpwnam(user)
            prefix += ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", "--"]
        return [*prefix, *args]

    def run(self, args: Sequence[str], env: dict[str, str], user: str | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(args, user), env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=TIMEOUT, stdin=subprocess.DEVNULL)

    def tables(self) -> list[str]:
        """The nftables tables of the namespace, as `nft list tables` prints them."""
        result = self.run(["nft", "list", "tables"], {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        assert result.returncode == 0, result.stderr
        return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def _world_usable(path: str, mode: int) -> bool:
    """Whether any user may use path (mode: stat.S_IXOTH or S_IROTH) and traverse every directory above it."""
    current = Path(path)
    if not os.stat(current).st_mode & mode:
        return False
    return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in current.parents)


def shared_python() -> tuple[str, dict[str, str]]:
    """An interpreter another user can run, and the environment that gives it this venv's packages (the venv's
    own interpreter may live under a 0700 home, e.g. pyenv's under /root)."""
    site = sysconfig.get_paths()["purelib"]
    assert _world_usable(site, stat.S_IROTH), f"{site} must be readable by other users for these tests"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (os.path.realpath(sys.executable), f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if os.path.exists(candidate) and _world_usable(candidate, stat.S_IXOTH):
            return candidate, {"PYTHONPATH": site}
    raise AssertionError(f"no python{version} that other users may run")


def private_home(user: str, parent: Path) -> Path:
    """A home directory owned by user (made empty once), under a directory every user can traverse."""
    home = parent / f"home-{user}"
    home.mkdir(exist_ok=True)
    account = pwd.getpwnam(user)
    os.chown(home, account.pw_uid, account.pw_gid)
    return home
