"""A test server on the listeners' own server class (listeners.TrackedServer), so handlers under test get
GatedRequests carrying the peer uid the test chooses, as they do in the daemon."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import BaseTestServer

from metadata_proxy.gate import Handler
from metadata_proxy.listeners import TrackedServer


class GatedTestServer(BaseTestServer):
    def __init__(self, handler: Handler, uid: Callable[[], int | None] = lambda: None, **kwargs: Any) -> None:
        super().__init__(host="127.0.0.1", **kwargs)
        self._handler = handler
        self._uid = uid

    async def _make_runner(self, **kwargs: Any) -> web.ServerRunner:
        return web.ServerRunner(TrackedServer(self._handler, 64, uid_of=lambda sock: self._uid()))
