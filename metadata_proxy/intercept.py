"""The interception rules of transparent mode: nftables sends chosen local users' TCP connections to the IMDS
addresses to the daemon's transparent endpoint on loopback.

Everything lives in one table of our own (`inet metadata_proxy`). Every change is one `nft -f -` transaction
that deletes that table (creating it first, so the delete cannot fail) and writes it anew: a restart after a
crash replaces the old rules instead of stacking on them, and removing is the same transaction without the
new table. The rules sit on the nat output hook, which sees locally generated packets and knows the sending
socket's owner (`meta skuid` / `meta skgid`); users not listed, and the daemon's own uid, pass untouched. If
the rules stay while nothing listens on the endpoint (the daemon was killed), intercepted clients get
"connection refused" from loopback: they never fall through to the real IMDS.

Writing rules needs CAP_NET_ADMIN; serving does not. `metadata-proxy intercept install` / `remove` let a
privileged step (systemd's ExecStartPre=+ / ExecStopPost=+) do it for an unprivileged daemon.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable

from metadata_proxy.errors import EXIT_OK, StartupError, report

IMDS_V4 = "169.254.169.254"
IMDS_V6 = "fd00:ec2::254"
TABLE = "inet metadata_proxy"
CAP_NET_ADMIN = 12  # linux/capability.h
NFT_TIMEOUT = 30  # seconds; nft answers in milliseconds, this only bounds a wedged one


def _set(numbers: Iterable[int]) -> str:
    return "{ " + ", ".join(str(number) for number in sorted(set(numbers))) + " }"


def ruleset(uids: Iterable[int], gids: Iterable[int], port: int, exempt_uid: int | None = None) -> str:
    """The nft script that replaces our table with rules redirecting these uids' and gids' connections to
    port 80 of the IMDS addresses to `port` on loopback (127.0.0.1 and ::1)."""
    matches = [f"meta skuid {_set(uids)}"] if uids else []
    matches += [f"meta skgid {_set(gids)}"] if gids else []
    rules = [f"meta skuid {exempt_uid} return"] if exempt_uid is not None else []
    for match in matches:
        rules.append(f"ip daddr {IMDS_V4} tcp dport 80 {match} dnat ip to 127.0.0.1:{port}")
        rules.append(f"ip6 daddr {IMDS_V6} tcp dport 80 {match} dnat ip6 to [::1]:{port}")
    body = "\n".join(f"\t\t{rule}" for rule in rules)
    return (f"{removal()}table {TABLE} {{\n\tchain output {{\n\t\ttype nat hook output priority -100; "
            f"policy accept;\n{body}\n\t}}\n}}\n")


def removal() -> str:
    """The nft script that deletes our table, whether or not it exists."""
    return f"add table {TABLE}\ndelete table {TABLE}\n"


def apply(script: str) -> None:
    """Runs one nft transaction; a failure is a StartupError with nft's own words."""
    nft = shutil.which("nft", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if nft is None:
        raise StartupError("transparent mode needs the nft command: install nftables (apt-get install nftables)")
    try:
        result = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True,
                                timeout=NFT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise StartupError(f"cannot run nft: {error}") from None
    if result.returncode != 0:
        reason = " ".join(result.stderr.split())[:300] or f"exit status {result.returncode}"
        raise StartupError(f"nft could not write the interception rules: {reason}")


def may_write_rules(status_path: str = "/proc/self/status") -> bool:
    """Whether this process holds CAP_NET_ADMIN (root usually does; a systemd service of ours does not)."""
    try:
        with open(status_path, encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return False


def command(script: str) -> int:
    """`metadata-proxy intercept install|remove`: one transaction; its exit status (1 with one line if not)."""
    try:
        if not may_write_rules():
            raise StartupError("writing firewall rules needs CAP_NET_ADMIN: run this as root")
        apply(script)
    except StartupError as error:
        return report(error)
    return EXIT_OK
