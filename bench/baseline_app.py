"""Baseline (a): the framework ceiling, a bare aiohttp web.Application returning the same bytes.

Usage: python bench/baseline_app.py PORT BODY_FILE
"""

from __future__ import annotations

import sys

from aiohttp import web


def main() -> None:
    port, body_file = int(sys.argv[1]), sys.argv[2]
    with open(body_file, "rb") as file:
        body = file.read()

    async def credentials(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/latest/meta-data/iam/security-credentials/role-01", credentials)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
