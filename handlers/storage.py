"""Storage: routes arrive with the ML data work."""

from __future__ import annotations

from aiohttp import web


def routes() -> list[web.RouteDef]:
    return []
