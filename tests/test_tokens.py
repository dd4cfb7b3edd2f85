"""IMDSv2 tokens: exact expiry, no forgery, TTL parsing (contract §3.1, §8.2, §8.4)."""

from __future__ import annotations

import pytest

from metadata_proxy.tokens import MAX_TTL, TOKEN_LENGTH, TokenAuthority, parse_ttl
from tests.support.fakeclock import FakeClock


@pytest.mark.parametrize(("raw", "ttl"), [("1", 1), ("300", 300), ("21600", MAX_TTL), ("0021600", MAX_TTL)])
def test_valid_ttls(raw: str, ttl: int) -> None:
    assert parse_ttl(raw) == ttl


@pytest.mark.parametrize("raw", [None, "", "0", "21601", "-1", "1.0", "abc", "\uff11", "99999999999999999999"])
def test_invalid_ttls(raw: str | None) -> None:
    assert parse_ttl(raw) is None


def test_token_is_valid_for_exactly_its_ttl() -> None:
    """§8.4: valid exactly TTL seconds from issue (Go caches it for the echoed TTL)."""
    clock = FakeClock(start=1_700_000_000.0)
    tokens = TokenAuthority(clock.time)
    tok = tokens.issue(300)
    assert len(tok) == TOKEN_LENGTH and tok.isascii() and "\n" not in tok
    clock.advance(299.999)
    assert tokens.verify(tok)
    clock.advance(0.001)
    assert not tokens.verify(tok)


def test_tokens_are_unique_and_bound_to_the_process_key() -> None:
    clock = FakeClock()
    tokens = TokenAuthority(clock.time)
    assert tokens.issue(60) != tokens.issue(60)
    assert not TokenAuthority(clock.time).verify(tokens.issue(60))  # another process (a restart)


def test_forged_and_malformed_tokens_are_rejected() -> None:
    clock = FakeClock()
    tokens = TokenAuthority(clock.time)
    tok = tokens.issue(60)
    for i in range(len(tok) - 1):  # the last character carries unused padding bits
        forged = tok[:i] + ("A" if tok[i] != "A" else "B") + tok[i + 1:]
        assert not tokens.verify(forged), i
    for bad in (None, "", tok + "A", tok[:-1], "!" * TOKEN_LENGTH, "\u00e9" * TOKEN_LENGTH):
        assert not tokens.verify(bad)
