"""--hop-limit, read back from the running daemon's own sockets (not from a socket the test made).

The test borrows the daemon's file descriptors with pidfd_getfd(2) and asks each TCP socket for its IP TTL:
the listening socket and a connection it accepted must both carry the limit (replies to clients travel with
it). Borrowing another process's descriptors needs root, or the same user with ptrace rights; CI is root.
"""

from __future__ import annotations

import ctypes
import os
import platform
import socket
from pathlib import Path

import pytest

from tests.conftest import World, launch
from tests.support.http import get, token

SYS_PIDFD_GETFD = 438  # the same number on every architecture that has it


def borrowed_sockets(pid: int) -> list[socket.socket]:
    """The process's TCP sockets, as sockets of ours (dup'ed by the kernel)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    found = []
    try:
        for entry in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if not os.readlink(entry).startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(entry.name), 0)
            if fd < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            sock = socket.socket(fileno=fd)
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                found.append(sock)
            else:
                sock.close()
    finally:
        os.close(pidfd)
    return found


@pytest.mark.skipif(platform.system() != "Linux", reason="pidfd_getfd is Linux's")
def test_hop_limit_is_set_on_the_daemons_listening_and_accepted_sockets(world: World, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("borrowing the daemon's sockets needs root (CI runs as root)")
    process = launch(world, tmp_path, "--hop-limit", "1")
    try:
        url = process.wait_ready()
        assert url and get(url, "/latest/meta-data/iam/security-credentials/", token(url)).text == "role-01"
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert client.recv(12).startswith(b"HTTP/1.1")  # accepted and answered: the connection exists
            sockets = borrowed_sockets(process.proc.pid)
            try:
                ours = [s for s in sockets if s.getsockname()[1] == port]
                listening = [s for s in ours if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)]
                accepted = [s for s in ours if not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)]
                assert len(listening) == 1 and len(accepted) >= 1
                assert [s.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) for s in listening + accepted] == \
                       [1] * (1 + len(accepted))
            finally:
                for s in sockets:
                    s.close()
    finally:
        assert process.stop() == 0
