"""A small aiohttp server standing in for the outside world that workflows call."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from typing import Any

from aiohttp import web


class Outside:
    """Endpoints that answer, fail, stall or block on purpose, and remember every call."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()  # path -> calls
        self.keys: defaultdict[str, list[str]] = defaultdict(list)  # path -> Idempotency-Keys
        self.failures_left: dict[str, int] = {}
        self.release = asyncio.Event()
        self.blocked = asyncio.Event()
        self.cancelled = 0
        self.broken = True

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/ok/{name}", self.ok)
        app.router.add_get("/flaky/{name}", self.flaky)
        app.router.add_get("/status/{code}", self.status)
        app.router.add_get("/slow/{name}", self.slow)
        app.router.add_get("/block/{name}", self.block)
        app.router.add_get("/toggle/{name}", self.toggle)
        return app

    def _record(self, request: web.Request) -> None:
        self.calls[request.path] += 1
        self.keys[request.path].append(request.headers.get("Idempotency-Key", ""))

    async def ok(self, request: web.Request) -> web.Response:
        self._record(request)
        body: Any = await request.json() if request.can_read_body else None
        return web.json_response(
            {"name": request.match_info["name"], "echo": body, "query": dict(request.query)}
        )

    async def flaky(self, request: web.Request) -> web.Response:
        """Fails with 503 `?fail=N` times, then answers."""
        self._record(request)
        left = self.failures_left.setdefault(request.path, int(request.query.get("fail", "1")))
        if left > 0:
            self.failures_left[request.path] = left - 1
            return web.json_response({"error": "try later"}, status=503)
        return web.json_response({"ok": True})

    async def status(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.json_response({"status": "as asked"}, status=int(request.match_info["code"]))

    async def slow(self, request: web.Request) -> web.Response:
        self._record(request)
        await asyncio.sleep(float(request.query.get("s", "0.3")))
        return web.json_response({"slept": True})

    async def block(self, request: web.Request) -> web.Response:
        """Holds the request until the test sets `release`."""
        self._record(request)
        self.blocked.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return web.json_response({"released": True})

    async def toggle(self, request: web.Request) -> web.Response:
        """Fails with 400 while `broken` is set."""
        self._record(request)
        if self.broken:
            return web.json_response({"error": "broken"}, status=400)
        return web.json_response({"fixed": True})
