"""The system clock's sleep follows the wall clock: after a suspend or an NTP step the refresher wakes on time."""

from __future__ import annotations

import asyncio

import pytest

from metadata_proxy import clock as clock_module
from metadata_proxy.clock import SystemClock

yield_once = asyncio.sleep  # the real one, kept before the tests replace asyncio.sleep for the clock


async def test_a_wall_clock_jump_past_the_deadline_wakes_the_sleeper(monkeypatch: pytest.MonkeyPatch) -> None:
    """An hour-long sleep is taken in slices of at most 30 s of the monotonic clock, re-reading the wall clock
    after each: when the wall clock jumps past the deadline (a laptop resumes), the next slice ends it."""
    wall = [1_000_000.0]
    slices: list[float] = []

    async def monotonic_sleep(seconds: float) -> None:
        slices.append(seconds)
        wall[0] += seconds if len(slices) < 3 else 7200  # the third slice spans a two-hour suspend
        await yield_once(0)

    monkeypatch.setattr(clock_module.time, "time", lambda: wall[0])
    monkeypatch.setattr(clock_module.asyncio, "sleep", monotonic_sleep)
    await SystemClock().sleep_until(1_000_000.0 + 3600)
    assert slices == [30, 30, 30]  # woke at the first look after the jump, not an hour of slices later
    assert wall[0] >= 1_000_000.0 + 3600


async def test_the_last_slice_ends_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    wall = [500.0]
    slices: list[float] = []

    async def monotonic_sleep(seconds: float) -> None:
        slices.append(seconds)
        wall[0] += seconds
        await yield_once(0)

    monkeypatch.setattr(clock_module.time, "time", lambda: wall[0])
    monkeypatch.setattr(clock_module.asyncio, "sleep", monotonic_sleep)
    await SystemClock().sleep_until(575.0)
    assert slices == [30, 30, 15]
