"""Which local user is on the other end of a loopback TCP connection (Linux).

TCP has no SO_PEERCRED, but the kernel knows the owner of the client's socket. It is asked through
NETLINK_SOCK_DIAG (the interface `ss` uses) for exactly one socket: the one whose local end is the peer
address we see and whose remote end is our own. That is one request and one answer of about 100 bytes,
whatever the size of the socket table (reading /proc/net/tcp instead costs a scan of every socket on the
machine, 70 ms with 9,000 of them). Anything that cannot be determined is None: the caller denies.

Why this may run on the event loop (about 9 us a lookup here, with 8,000 sockets in the table as with none):
a netlink request to the kernel is handled synchronously inside send(), which queues the answer on our
socket before it returns; there is no other process to wait for. (Older kernels serialise sock_diag requests
with a mutex, which a concurrent `ss` holds for one batch of its dump at a time: a short, bounded wait.)
The socket is nonblocking all the same, so if no answer is queued the lookup gives None at once rather than
wait. pyroute2's DiagSocket offers only the dump of the whole table (155 ms for 4,300 sockets), which is
what this module exists to avoid.

A connection redirected by a NAT rule (transparent mode) is known to the client's socket by the address the
client dialled, not ours: the kernel's connection tracking tells that original destination
(SO_ORIGINAL_DST), and it is asked about instead.
"""

from __future__ import annotations

import ipaddress
import itertools
import pwd
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
NO_COOKIE = 0xFFFFFFFF  # inet_diag's INET_DIAG_NOCOOKIE: match by addresses, not by socket cookie
HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, sequence, port id
# struct inet_diag_sockid: ports in network byte order, then addresses (IPv4 in the first 4 of 16 bytes),
# interface and cookie in host order. It sits inside struct inet_diag_req_v2 (asked) and inet_diag_msg (answered).
PORTS = struct.Struct(">HH")
REQUEST_HEAD = struct.Struct("=BBBxI")  # family, protocol, extensions, pad, states
REPLY_HEAD = struct.Struct("=BBBB")  # family, state, timer, retransmits
REPLY_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
ALL_STATES = 0xFFFFFFFF
# States in which the client's socket is still the process's own (a TIME_WAIT remnant reports uid 0, and a
# listening socket on the client's port is not the client): ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK,
# CLOSING.
CONNECTED = frozenset({1, 4, 5, 8, 9, 11})
ANSWER_SIZE = 8192
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same number at SOL_IPV6


class SockDiag:
    """One nonblocking NETLINK_SOCK_DIAG socket, asked one exact question at a time."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                   NETLINK_SOCK_DIAG)
        self._sequence = itertools.count(1)

    def uid(self, peer: tuple[str, int], local: tuple[str, int]) -> int | None:
        """The uid owning the connected socket at `peer` whose remote end is `local`, or None."""
        try:
            client, server = (ipaddress.ip_address(address.split("%", 1)[0]) for address in (peer[0], local[0]))
        except ValueError:
            return None
        if client.version != server.version:
            return None
        family = socket.AF_INET if client.version == 4 else socket.AF_INET6
        sequence = next(self._sequence) & 0xFFFFFFFF
        ports = PORTS.pack(peer[1], local[1])
        addresses = client.packed.ljust(16, b"\0") + server.packed.ljust(16, b"\0")
        body = (REQUEST_HEAD.pack(family, socket.IPPROTO_TCP, 0, ALL_STATES) + ports + addresses
                + struct.pack("=III", 0, NO_COOKIE, NO_COOKIE))
        try:
            self._sock.send(HEADER.pack(HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, sequence, 0)
                            + body)
            while True:  # skip an answer left over from an earlier question (there should be none)
                answer = self._sock.recv(ANSWER_SIZE)
                if len(answer) >= HEADER.size and HEADER.unpack_from(answer)[3] == sequence:
                    break
        except OSError:  # EAGAIN (no answer queued), ENOBUFS, a closed socket: unknown
            return None
        return parse_answer(answer, ports + addresses)


def parse_answer(answer: bytes, socket_id: bytes) -> int | None:
    """The uid in an inet_diag_msg answer that describes exactly the socket asked about; else None."""
    length, kind, _flags, _sequence, _port = HEADER.unpack_from(answer)
    at = HEADER.size + REPLY_HEAD.size
    tail = at + len(socket_id) + 12  # the interface and cookie follow the ports and addresses
    if kind == NLMSG_ERROR or length < tail + REPLY_TAIL.size or len(answer) < length:
        return None
    state = REPLY_HEAD.unpack_from(answer, HEADER.size)[1]
    if state not in CONNECTED or answer[at:at + len(socket_id)] != socket_id:
        return None
    return REPLY_TAIL.unpack_from(answer, tail)[3]


_diag: SockDiag | None = None


def peer_uid(peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """SockDiag.uid() on one socket kept for the life of the process (opened on first use)."""
    global _diag
    if _diag is None:
        try:
            _diag = SockDiag()
        except OSError:  # no netlink (a sandbox that forbids it, no descriptor left): nobody can be identified
            return None
    return _diag.uid(peer, local)


def socket_uid(sock: socket.socket | None) -> int | None:
    """peer_uid() for an accepted TCP socket."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        peer, local = sock.getpeername()[:2], sock.getsockname()[:2]
    except OSError:
        return None
    return peer_uid(peer, original_destination(sock) or local)


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """Where the client connected before a DNAT rule sent it here; None if the connection is not tracked."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)  # struct sockaddr_in6
            address = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        else:
            raw = sock.getsockopt(socket.IPPROTO_IP, SO_ORIGINAL_DST, 16)  # struct sockaddr_in
            address = socket.inet_ntop(socket.AF_INET, raw[4:8])
    except (OSError, ValueError):
        return None
    return address, struct.unpack("!H", raw[2:4])[0]


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "?"


def describe(uid: int | None) -> str:
    """A uid as log lines name it."""
    return "an undeterminable user" if uid is None else f"uid {uid} ({user_name(uid)})"


def parse_user(value: str) -> int:
    """A user name (or numeric uid) as a uid; ValueError for an unknown user."""
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise ValueError(f"no such user: {value}") from None
