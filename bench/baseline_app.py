"""The aiohttp baselines: a bare handler returning the same bytes as the product, on the event loop asked for.

    python bench/baseline_app.py application|server asyncio|uvloop PORT BODY_FILE

`application` is a bare `web.Application` with one route (the framework ceiling most aiohttp services meet);
`server` is aiohttp's low-level `web.Server` with one handler, what metadata-proxy itself is built on, so it
is the ceiling for the product. No access log in either.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

PATH = "/latest/meta-data/iam/security-credentials/role-01"


def runner(kind: str, body: bytes) -> web.BaseRunner:
    async def credentials(request: web.BaseRequest) -> web.Response:
        return web.Response(body=body, content_type="text/plain")

    if kind == "application":
        app = web.Application()
        app.router.add_get(PATH, credentials)
        return web.AppRunner(app, access_log=None)

    async def handler(request: web.BaseRequest) -> web.Response:
        if request.path != PATH:  # the product routes too; the cheapest routing there is
            return web.Response(status=404)
        return await credentials(request)

    return web.ServerRunner(web.Server(handler, access_log=None))


async def serve(kind: str, port: int, body: bytes) -> None:
    server = runner(kind, body)
    await server.setup()
    await web.TCPSite(server, "127.0.0.1", port).start()
    await asyncio.Event().wait()  # until terminated


def main() -> None:
    kind, loop, port, body_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    with open(body_file, "rb") as file:
        body = file.read()
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as run:
        run.run(serve(kind, port, body))


if __name__ == "__main__":
    main()
