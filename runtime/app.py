"""The application factory: wires handlers, middlewares and resources. No I/O here."""

from __future__ import annotations

import warnings

import aiohttp_cors
from aiohttp import web
from aiohttp_apigami import AiohttpApiSpec, OpenApiVersion, validation_middleware

from actors.batch_predictions import batch_jobs_ctx
from actors.deployments import deployments_ctx
from actors.dispatch import runs_ctx
from actors.profile_jobs import profiling_ctx
from handlers import (
    api_keys,
    audit,
    datasets,
    deployments,
    models,
    predictions,
    runs,
    schedules,
    storage,
    stream,
    system,
    training,
    webhooks,
    workflows,
)
from handlers.common import validation_error_callback
from runtime.auth import TokenVerifier, auth_middleware
from runtime.clock import Clock
from runtime.config import Config
from runtime.db import db_pool_ctx
from runtime.idempotency import idempotency_cleanup_ctx, idempotency_middleware
from runtime.keys import CLOCK, CONFIG, METRICS, VERIFIER
from runtime.metrics import Metrics, metrics_middleware
from runtime.middleware import error_middleware
from runtime.storage import storage_ctx

API_TITLE = "Stepwell"
API_VERSION = "0.1.0"
MAX_BODY_BYTES = 2 * 1024 * 1024

# aiohttp-apigami keeps its spec and validated data under string keys, which aiohttp warns about
# on every request; the keys are its own, so the warning says nothing about this code.
warnings.filterwarnings("ignore", category=web.NotAppKeyWarning, module="aiohttp_apigami")


def create_app(config: Config, *, clock: Clock | None = None) -> web.Application:
    """Build the application for `config`; resources start with the app, in this order."""
    app = web.Application(
        middlewares=[
            error_middleware,
            metrics_middleware,
            auth_middleware,
            idempotency_middleware,
            validation_middleware,
        ],
        client_max_size=MAX_BODY_BYTES,
    )
    app[CONFIG] = config
    app[CLOCK] = clock or Clock()
    app[METRICS] = Metrics()
    app[VERIFIER] = TokenVerifier(
        secret=config.jwt_secret,
        audience=config.jwt_audience,
        issuer=config.jwt_issuer,
        jwks_url=config.jwks_url,
    )
    modules = (
        system,
        workflows,
        runs,
        stream,
        schedules,
        webhooks,
        datasets,
        models,
        deployments,
        predictions,
        training,
        storage,
        api_keys,
        audit,
    )
    for module in modules:
        app.router.add_routes(module.routes())
    setup_cors(app, config.cors_origins)
    app.cleanup_ctx.append(db_pool_ctx)
    app.cleanup_ctx.append(idempotency_cleanup_ctx)
    app.cleanup_ctx.append(storage_ctx)
    # Before the runs: a recovered run's deploy step finds the deployer, and deploys a process
    # before this one left behind are ended before any run starts one.
    app.cleanup_ctx.append(deployments_ctx)
    app.cleanup_ctx.append(runs_ctx)
    app.cleanup_ctx.append(batch_jobs_ctx)
    app.cleanup_ctx.append(profiling_ctx)
    setup_docs(app)
    return app


def setup_cors(app: web.Application, origins: tuple[str, ...]) -> None:
    """Browsers on `STEPWELL_CORS_ORIGINS` may call the API (a dashboard on another origin)."""
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=True,
        expose_headers=("X-Request-ID",),
        allow_headers="*",
        max_age=3600,
    )
    cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(origins, options))
    for route in list(app.router.routes()):
        cors.add(route)


def setup_docs(app: web.Application) -> AiohttpApiSpec:
    """OpenAPI 3 at /api/docs/openapi.json and Swagger UI at /api/docs."""
    spec = AiohttpApiSpec(
        url="/api/docs/openapi.json",
        swagger_path="/api/docs",
        error_callback=validation_error_callback,
        openapi_version=OpenApiVersion.V303,
        title=API_TITLE,
        version=API_VERSION,
        info={
            "description": "Durable ML workflow automation. Errors use the shape "
            '`{"error": {"code", "message", "details", "request_id"}}`.'
        },
        security=[{"bearerAuth": []}, {"apiKeyAuth": []}],
    )
    spec.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    )
    spec.spec.components.security_scheme(
        "apiKeyAuth", {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    )
    spec.register(app, in_place=True)
    return spec
