"""Prometheus metrics at `/metrics` (no auth), one registry per app."""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from runtime.keys import METRICS


class Metrics:
    """What Stepwell counts: HTTP requests, ended runs and training jobs, fire lateness."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "stepwell_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "stepwell_http_request_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            registry=self.registry,
        )
        self.runs = Counter(
            "stepwell_runs_finished",
            "Runs that ended, by status",
            ["status"],
            registry=self.registry,
        )
        self.jobs = Counter(
            "stepwell_training_jobs_finished",
            "Training jobs that ended, by status",
            ["status"],
            registry=self.registry,
        )
        self.fire_lateness = Histogram(
            "stepwell_schedule_fire_lateness_seconds",
            "Fire recorded minus its due time",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )


def _route(request: web.Request) -> str:
    # The route template, not the path: one series per endpoint, not per id.
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts and times every request (inside the error middleware, so errors count too)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception as exc:
        status = getattr(exc, "status", 500)
        raise
    finally:
        metrics = request.app[METRICS]
        route = _route(request)
        metrics.requests.labels(request.method, route, str(status)).inc()
        metrics.request_seconds.labels(request.method, route).observe(time.perf_counter() - started)


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
