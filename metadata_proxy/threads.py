"""Waiting without getting stuck: blocking calls in threads that never hold up the process's exit, and waits
that a stop request cuts short."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def in_daemon_thread(function: Callable[..., T], *args: object) -> T:
    """Runs a blocking call in a thread that cannot delay the process's exit.

    asyncio.to_thread's executor is joined at shutdown, so a stop during an AssumeRole would wait for STS's read
    timeout (up to --sts-timeout). A cancelled caller returns at once; the call's late result is dropped.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the caller was cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        result: T | None = None
        failure: BaseException | None = None
        try:
            result = function(*args)
        except BaseException as error:  # delivered to the awaiting task, which decides
            failure = error
        with contextlib.suppress(RuntimeError):  # the loop closed while we worked: nobody waits any more
            loop.call_soon_threadsafe(settle, result, failure)

    threading.Thread(target=work, name="metadata-proxy-worker", daemon=True).start()
    return await future


class Stopped(Exception):
    """A stop was requested while waiting."""


async def unless_stopped(stop: asyncio.Event, awaitable: Awaitable[T]) -> T:
    """Awaits it, unless stop is set first: then it is cancelled and Stopped is raised."""
    work = asyncio.ensure_future(awaitable)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(BaseException):  # collected here, so nothing is logged as unretrieved
                await work
    if work.cancelled():
        raise Stopped
    return work.result()
