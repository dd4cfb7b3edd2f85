"""A crowded socket table: N idle loopback TCP connections, held open while a measurement runs.

The peer-uid lookup behind `--allow-uid` consults the kernel's socket table, so its cost may grow with the
number of sockets on the host; busy hosts hold thousands. The connections go to a listener of their own (a
child process, `python -m bench.socket_table PORT COUNT`), never to the product: they are rows in the table,
not load. Both ends stay within RLIMIT_NOFILE (each process raises its soft limit to the hard one and holds
one end), everything is on 127.0.0.1, and the client ends are closed with a reset so that no TIME_WAIT rows
outlive the measurement.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator

SPARE_DESCRIPTORS = 512  # for everything else a process holds (wrk pipes, moto, the runner's own sockets)


def raise_descriptor_limit(needed: int) -> None:
    """Soft RLIMIT_NOFILE raised to what is needed (the hard limit too, which only root may); one clear error
    if that is refused."""
    want = needed + SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard if hard == resource.RLIM_INFINITY else max(hard, want)))
    except (ValueError, OSError):
        raise SystemExit(f"bench: {needed} idle connections need {want} file descriptors, the hard limit is "
                         f"{hard} (ulimit -Hn)") from None


@contextlib.contextmanager
def idle_connections(count: int) -> Iterator[int]:
    """`count` established loopback connections for the duration of the block; yields how many were held."""
    raise_descriptor_limit(count)
    listener = subprocess.Popen([sys.executable, "-m", "bench.socket_table", str(count)], stdout=subprocess.PIPE,
                                text=True)
    clients: list[socket.socket] = []
    try:
        port = int(listener.stdout.readline())
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", port), timeout=30)
            # on close: a reset, not a FIN, so the connection leaves no TIME_WAIT row behind
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            clients.append(client)
        held = int(listener.stdout.readline())  # the listener accepted all of them
        yield held
    finally:
        for client in clients:
            client.close()
        listener.terminate()
        listener.wait(timeout=30)


def hold(count: int) -> None:
    """The listener's side: accept `count` connections, say so, keep them until terminated."""
    raise_descriptor_limit(count)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1024)
        print(server.getsockname()[1], flush=True)
        accepted = [server.accept()[0] for _ in range(count)]
        print(len(accepted), flush=True)
        signal.pause()  # until the runner terminates it


if __name__ == "__main__":
    hold(int(sys.argv[1]))
