"""The credential store: the refresher's results, which requests read from memory and nothing else.

Its contract, in both directions:
- an entry becomes unreadable MANDATORY_MARGIN seconds before its expiry (a cachetools TLRUCache whose timer is
  the injected clock), so a credential that could expire while a client still uses it is never handed out;
- an entry that is already past that point is refused loudly on the way in (UnusableCredentials), never
  stored-and-dropped: dropping it silently would also evict the still-valid entry it replaces, and leave the
  refresher believing it had succeeded (the spin a skewed clock used to cause).
"""

from __future__ import annotations

from cachetools import TLRUCache

from metadata_proxy.clock import Clock
from metadata_proxy.model import Credentials, RoleSpec, format_time

MANDATORY_MARGIN = 60.0  # never hand out credentials in their last minute


class UnusableCredentials(ValueError):
    """Credentials that expire too soon to serve, at the moment they arrive."""


class CredentialStore:
    """Current credentials per RoleSpec."""

    def __init__(self, clock: Clock, maxsize: int = 1024) -> None:
        self._clock = clock
        self._entries: TLRUCache[RoleSpec, Credentials] = TLRUCache(
            maxsize, ttu=lambda _key, creds, _now: usable_until(creds), timer=clock.time)
        self.generation = 0  # bumped by every change, so readers may memoise what they rendered from it

    def get(self, spec: RoleSpec) -> Credentials | None:
        return self._entries.get(spec)

    def put(self, spec: RoleSpec, creds: Credentials) -> None:
        """Stores creds for spec; raises UnusableCredentials (and keeps what it had) if they are too old."""
        now = self._clock.time()
        if usable_until(creds) <= now:
            raise UnusableCredentials(
                f"they expire at {format_time(creds.expiration)}, {creds.expiration - now:.0f} s from now by this "
                f"host's clock, and are served only until {MANDATORY_MARGIN:.0f} s before that")
        self._entries[spec] = creds
        self.generation += 1

    def discard(self, spec: RoleSpec) -> None:
        self._entries.pop(spec, None)
        self.generation += 1


def usable_until(creds: Credentials) -> float:
    return creds.expiration - MANDATORY_MARGIN
