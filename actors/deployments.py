"""Deployments: a model version, by number or alias, made ready to serve.

A local deployment loads the model into this process's cache (so the first prediction does not
pay for it) and records where to call it. Vertex AI endpoints are not built yet: asking for one
is refused rather than recorded as something that will never serve.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any
from uuid import UUID

import asyncpg

from actors import models as mdl
from actors.model_cache import ModelCache
from actors.predictions import servable_version
from runtime.audit import AuditContext, record_audit
from runtime.db import Conn
from runtime.errors import ValidationFailed
from runtime.sql import queries

LOCAL_ENDPOINT = "/api/v1/predictions"
TARGETS = ("local", "vertex")


class DeploymentStatus(StrEnum):
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    FAILED = "failed"
    UNDEPLOYED = "undeployed"


def _refuse_vertex(compute: str) -> None:
    raise ValidationFailed(
        "Vertex AI endpoints are not available yet in this installation "
        f"(STEPWELL_COMPUTE={compute}): deploy with target 'local', which serves the model "
        f"at POST {LOCAL_ENDPOINT}",
        {"fields": {"target": ["'vertex' is not available yet"]}},
    )


async def deploy(
    pool: asyncpg.Pool[Any],
    cache: ModelCache,
    ctx: AuditContext,
    model_id: UUID,
    ref: str,
    body: Mapping[str, Any],
    compute: str,
) -> asyncpg.Record:
    """Deploy version `ref` (a number or an alias) of a visible, active model.

    The model is loaded before anything is written, so a version that cannot serve is a 422
    with nothing recorded; the model is checked again under its lock as the row is written.
    """
    owner = ctx.principal.owner_filter
    async with pool.acquire() as conn:
        mdl.ensure_active("deploy", await mdl.get_model(conn, model_id, owner))
        version = await mdl.get_version(conn, model_id, ref, owner)
        servable = await servable_version(conn, version["id"], None)
    if body["target"] == "vertex":
        _refuse_vertex(compute)
    await cache.get(servable)
    alias = None if ref.isdigit() else ref
    async with pool.acquire() as conn, conn.transaction():
        return await _record(conn, ctx, version, alias, body)


async def _record(
    conn: Conn,
    ctx: AuditContext,
    version: asyncpg.Record,
    alias: str | None,
    body: Mapping[str, Any],
) -> asyncpg.Record:
    """The `deployed` row and its audit entry, under the model's lock (archives wait)."""
    model = await conn.fetchrow(
        queries["lock_model_shared"], version["model_id"], ctx.principal.owner_filter
    )
    assert model is not None  # noqa: S101 - models are archived, never deleted
    mdl.ensure_active("deploy", model)
    config = {k: body[k] for k in ("machine_type", "min_replicas", "max_replicas") if k in body}
    deployment_id = await conn.fetchval(
        queries["insert_deployment"],
        model["owner_id"],
        model["id"],
        version["id"],
        alias,
        body["target"],
        DeploymentStatus.DEPLOYED,
        LOCAL_ENDPOINT,
        config,
        ctx.principal.user_id,
    )
    await record_audit(
        conn,
        ctx,
        action="deploy",
        entity_type=mdl.ENTITY,
        entity_id=str(model["id"]),
        owner_id=model["owner_id"],
        changes={
            "deployment_id": str(deployment_id),
            "version": version["version"],
            "alias": alias,
            "target": body["target"],
            "endpoint": LOCAL_ENDPOINT,
        },
    )
    row: asyncpg.Record | None = await conn.fetchrow(queries["get_deployment"], deployment_id)
    assert row is not None  # noqa: S101 - written just above
    return row
