"""Which local user is on the other end of a loopback TCP connection (Linux).

TCP has no SO_PEERCRED, but the kernel's socket table does: /proc/net/tcp (and tcp6) lists every socket
with its owner's uid. The client's end of our connection is the ESTABLISHED entry whose local address is
the peer address we see and whose remote address is our own. The lookup is one substring search of that
file, made once per connection (the caller caches it for the connection's life, so a reused port is looked
up afresh for the new connection), and anything that cannot be determined is None: the caller denies.
"""

from __future__ import annotations

import ipaddress
import pwd
import socket

TABLES = {4: "/proc/net/tcp", 6: "/proc/net/tcp6"}
ESTABLISHED = "01"


def _hex_address(address: str) -> tuple[str, int]:
    """The kernel's notation: the address's 32-bit words in host (little-endian) byte order, as hex."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    packed = ip.packed
    words = [packed[i:i + 4][::-1] for i in range(0, len(packed), 4)]
    return "".join(word.hex() for word in words).upper(), ip.version


def _endpoint(address: str, port: int) -> tuple[str, int]:
    hexed, version = _hex_address(address)
    return f"{hexed}:{port:04X}", version


def peer_uid(peer: tuple[str, int], local: tuple[str, int], tables: dict[int, str] = TABLES) -> int | None:
    """The uid owning the socket at `peer` that is connected to `local`, or None."""
    try:
        client, version = _endpoint(*peer)
        server, _ = _endpoint(*local)
        with open(tables[version], encoding="ascii") as file:
            table = file.read()
    except (OSError, ValueError, KeyError):
        return None
    needle = f" {client} {server} {ESTABLISHED} "
    at = table.find(needle)
    if at < 0:
        return None
    line = table[at:table.find("\n", at)].split()
    # fields after the match: local rem st tx:rx tr:when retrnsmt uid ...
    try:
        return int(line[6])
    except (IndexError, ValueError):
        return None


def transport_uid(transport: object) -> int | None:
    """peer_uid() for an asyncio transport's socket."""
    sock = getattr(transport, "get_extra_info", lambda name: None)("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        peer, local = sock.getpeername()[:2], sock.getsockname()[:2]
    except OSError:
        return None
    return peer_uid(peer, local)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "?"


def parse_user(value: str) -> int:
    """A user name (or numeric uid) as a uid; ValueError for an unknown user."""
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise ValueError(f"no such user: {value}") from None
