"""Who holds the open connections: a cap for the whole process, a share per local user, and who makes room.

Every listener's connections count against one table, because the limit they protect (the process's file
descriptors) is one. A connection is entered with its peer's uid when it is accepted, so one local user
cannot take every slot and leave the others nothing. Below the cap, every connection is accepted (a host
whose clients all run as one user may use all of it). At the cap:
- a uid at its share makes room among its own connections (its oldest idle one is closed), or is refused;
- a uid below its share makes the uid holding the most connections give up its oldest idle one, so it gets in
  as long as anyone holds an idle connection (a slowloris client still sending its headers counts as idle).
The newest connection is refused only when every connection that could make room is busy with a request.
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Hashable

MAX_CONNECTIONS = 1024  # open connections in all, unless the descriptor limit needs fewer
# A local client opens a handful of connections (an SDK's pool is up to 10); half of the cap lets one user run
# a large pool while leaving the other half to everyone else, and the cap's eviction takes from the heaviest.
SHARE = 0.5


# asyncio accepts up to this many connections per listener in one turn of the loop, and the descriptors of
# connections closed in that turn are released only in the next: the budget keeps room for them.
ACCEPT_BATCH = 32


def descriptor_budget() -> int:
    """Raises the soft RLIMIT_NOFILE to the hard one (systemd starts services at 1024 soft) and returns the
    number of connections that fit below it with room to spare: a quarter of the limit, and at least 128, is
    kept for the daemon's own descriptors (listening sockets, STS connections, token files, logs) and for the
    connections of one accept batch per listener that are closed but not yet released."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # an infinite hard limit may exceed fs.nr_open: keep the soft one
            pass
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(soft - max(128, soft // 4), 1)


class ConnectionTable:
    """Open connections by uid (None: undeterminable), in the order they were accepted."""

    def __init__(self, cap: int, share: int | None = None) -> None:
        self.cap = cap
        self.share = max(1, int(cap * SHARE)) if share is None else share
        self._by_uid: dict[int | None, dict[Hashable, None]] = {}
        self._uid_of: dict[Hashable, int | None] = {}

    def __len__(self) -> int:
        return len(self._uid_of)

    def held_by(self, uid: int | None) -> int:
        return len(self._by_uid.get(uid, ()))

    def admit(self, connection: Hashable, uid: int | None,
              idle: Callable[[Hashable], bool]) -> tuple[bool, Hashable | None]:
        """Whether `connection` may stay, and which open connection (already removed here) to close for it."""
        victim = None
        if len(self) >= self.cap:  # below the cap anyone gets in: a host whose clients are all one user uses it all
            if self.held_by(uid) >= self.share:
                victim = _oldest_idle(self._by_uid[uid], idle)
            else:
                for held in sorted(self._by_uid.values(), key=len, reverse=True):
                    if (victim := _oldest_idle(held, idle)) is not None:
                        break
            if victim is None:
                return False, None
        if victim is not None:
            self.remove(victim)
        self._by_uid.setdefault(uid, {})[connection] = None
        self._uid_of[connection] = uid
        return True, victim

    def remove(self, connection: Hashable) -> None:
        if connection not in self._uid_of:
            return
        uid = self._uid_of.pop(connection)
        held = self._by_uid[uid]
        del held[connection]
        if not held:
            del self._by_uid[uid]


def _oldest_idle(held: dict[Hashable, None], idle: Callable[[Hashable], bool]) -> Hashable | None:
    return next((connection for connection in held if idle(connection)), None)
