"""Webhook triggers: start runs when another system calls in."""

from __future__ import annotations

from aiohttp import web


def routes() -> list[web.RouteDef]:
    return []
