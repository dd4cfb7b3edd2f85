"""IMDSv2 tokens: exact expiry, no forgery, TTL parsing (contract §3.1, §8.2, §8.4)."""

from __future__ import annotations

import base64

import pytest

from metadata_proxy.tokens import MAX_TTL, TokenAuthority, parse_ttl
from tests.support.fakeclock import FakeClock


@pytest.mark.parametrize(("raw", "ttl"), [("1", 1), ("300", 300), ("21600", MAX_TTL), ("0021600", MAX_TTL)])
def test_valid_ttls(raw: str, ttl: int) -> None:
    assert parse_ttl(raw) == ttl


@pytest.mark.parametrize("raw", [None, "", "0", "21601", "-1", "1.0", "abc", "\uff11", "99999999999999999999"])
def test_invalid_ttls(raw: str | None) -> None:
    assert parse_ttl(raw) is None


def test_token_is_no_longer_than_an_aws_imds_token() -> None:
    """AWS's IMDS tokens are 56 characters; the AWS Common Runtime keeps the token in a 64-byte buffer that never
    grows (aws-c-auth, aws_imds_client.c), so a longer one makes every CRT-based client fail."""
    tokens = TokenAuthority(FakeClock().time)
    for ttl in (1, 300, 21600):
        tok = tokens.issue(ttl)
        assert len(tok) <= 56
        assert tok.isascii() and tok.isprintable() and tok.strip() == tok


def test_token_is_valid_for_exactly_its_ttl() -> None:
    """§8.4: valid exactly TTL seconds from issue (Go caches it for the echoed TTL)."""
    clock = FakeClock(start=1_700_000_000.0)
    tokens = TokenAuthority(clock.time)
    tok = tokens.issue(300)
    clock.advance(299.999)
    assert tokens.verify(tok)
    clock.advance(0.001)
    assert not tokens.verify(tok)


def test_six_hour_token_expires_exactly_even_once_memoised() -> None:
    clock = FakeClock(start=1_700_000_000.0)
    tokens = TokenAuthority(clock.time)
    tok = tokens.issue(21600)
    assert tokens.verify(tok)  # now memoised: the memo must not outlive the token
    clock.advance(21599.999)
    assert tokens.verify(tok)
    clock.advance(0.001)
    assert not tokens.verify(tok)


def test_tokens_are_unique_and_bound_to_the_process_key() -> None:
    clock = FakeClock()
    tokens = TokenAuthority(clock.time)
    assert tokens.issue(60) != tokens.issue(60)
    assert not TokenAuthority(clock.time).verify(tokens.issue(60))  # another process (a restart)
    assert not TokenAuthority(clock.time, key=b"k" * 32).verify(TokenAuthority(clock.time, key=b"K" * 32).issue(60))


def test_forged_and_malformed_tokens_are_rejected() -> None:
    clock = FakeClock()
    tokens = TokenAuthority(clock.time)
    tok = tokens.issue(60)
    assert tokens.verify(tok)
    for i in range(len(tok)):  # every character carries MAC-covered bits: no padding, no unused bits
        for other in ("A", "B", "-", "_"):
            if other != tok[i]:
                forged = tok[:i] + other + tok[i + 1:]
                assert not tokens.verify(forged), (i, other)
    for bad in (None, "", tok + "A", tok + "=", "A" + tok[:-1], tok[:-1], tok[:-2], tok[1:], tok + "\n",
                " " + tok[1:], "!" * len(tok), "\u00e9" * len(tok), "A" * len(tok)):
        assert not tokens.verify(bad), bad


def test_a_token_in_the_standard_base64_alphabet_is_refused() -> None:
    """'+' and '/' decode to the same bytes as '-' and '_': only the spelling that was issued may pass."""
    tokens = TokenAuthority(FakeClock().time)
    # a token holding both characters (one in three has them; never all of a thousand lack them)
    tok = next(t for t in (tokens.issue(60) for _ in range(1000)) if "-" in t and "_" in t)
    assert tokens.verify(tok)
    for spelling in (tok.replace("-", "+"), tok.replace("_", "/"), tok.replace("-", "+").replace("_", "/")):
        assert not tokens.verify(spelling), spelling


def test_a_token_with_a_later_expiry_spliced_in_is_refused() -> None:
    """The expiry is in the clear: raising it must break the MAC."""
    clock = FakeClock()
    tokens = TokenAuthority(clock.time)
    raw = bytearray(base64.urlsafe_b64decode(tokens.issue(1)))
    raw[5] ^= 0x01  # a later expiry, same nonce and MAC
    assert not tokens.verify(base64.urlsafe_b64encode(bytes(raw)).decode())


def test_the_verified_token_memo_stays_bounded() -> None:
    clock = FakeClock()
    tokens = TokenAuthority(clock.time)
    for _ in range(10_000):
        assert tokens.verify(tokens.issue(60))
        assert tokens.remembered <= 4096
    before = tokens.remembered
    genuine = tokens.issue(60)
    for i in range(1_000):  # forged tokens are never remembered
        assert not tokens.verify(f"{i:056d}")
        assert not tokens.verify(genuine[:-1] + ("A" if genuine[-1] != "A" else "B"))
    assert tokens.remembered == before
