"""Liveness, readiness and the step catalog."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp_apigami import docs

from actors.steps import catalog
from handlers.common import error_responses, ok
from runtime.keys import DB_POOL
from runtime.metrics import metrics_endpoint
from runtime.sql import queries

READY_TIMEOUT_S = 2.0


@docs(tags=["system"], summary="Liveness: the process answers", security=[])
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@docs(
    tags=["system"],
    summary="Readiness: the database answers",
    security=[],
    responses={200: {"description": "Ready"}, 503: {"description": "Database unreachable"}},
)
async def ready(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await request.app[DB_POOL].fetchval(queries["ping"])
    except Exception as exc:  # any failure means "not ready", never a 500
        return web.json_response(
            {"status": "unavailable", "checks": {"database": f"error: {type(exc).__name__}"}},
            status=503,
        )
    return web.json_response({"status": "ok", "checks": {"database": "ok"}})


@docs(
    tags=["catalog"],
    summary="Every step type with its config and output JSON Schemas and an example",
    responses=error_responses(401),
)
async def step_catalog(request: web.Request) -> web.Response:
    return ok(catalog())


@docs(
    tags=["system"],
    summary="Prometheus metrics",
    security=[],
    responses={200: {"description": "Prometheus text exposition format"}},
)
async def metrics(request: web.Request) -> web.Response:
    return await metrics_endpoint(request)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/metrics", metrics, allow_head=False),
        web.get("/health", health, allow_head=False),
        web.get("/health/ready", ready, allow_head=False),
        web.get("/api/v1/catalog/steps", step_catalog, allow_head=False),
    ]
