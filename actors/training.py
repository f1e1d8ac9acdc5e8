"""Training jobs: validated and stored (the row is the durable start command), or cancelled.

The job's actor (actors/training_job.py) does the work; these functions only write, in the
caller's transaction, and the caller wakes the actor after the commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import asyncpg

from runtime.audit import AuditContext, record_audit
from runtime.db import Conn
from runtime.errors import Conflict, NotFound, ValidationFailed
from runtime.shards import shard_of
from runtime.sql import queries

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
TASKS = {"classification": "classification", "regression": "regression"}


async def create_training_job(
    conn: Conn,
    audit: AuditContext | None,
    body: Mapping[str, Any],
    *,
    owner: str | None,
    created_by: str,
    backend: str,
    run: tuple[UUID, str] | None = None,
) -> asyncpg.Record:
    """A queued job training `model_id` on a dataset version (the latest unless named)."""
    model = await conn.fetchrow(queries["get_model_for_training"], body["model_id"], owner)
    if model is None:
        raise NotFound(f"model {body['model_id']} not found")
    if model["status"] != "active":
        raise Conflict(f"cannot train: model is {model['status']}")
    dataset = await conn.fetchrow(queries["get_dataset_for_training"], body["dataset_id"], owner)
    if dataset is None:
        raise NotFound(f"dataset {body['dataset_id']} not found")
    version = await conn.fetchrow(
        queries["latest_dataset_version"], body["dataset_id"], body.get("dataset_version")
    )
    if version is None:
        wanted = body.get("dataset_version")
        raise ValidationFailed(
            f"dataset has no version {wanted}" if wanted else "dataset has no versions yet",
            {"fields": {"dataset_version": "create a dataset version first"}},
        )
    config = dict(body.get("config") or {})
    task = config.setdefault("task", TASKS.get(model["model_type"]))
    if task not in TASKS:
        raise ValidationFailed(
            f"the local trainer does {', '.join(TASKS)}, not {model['model_type']}",
            {"fields": {"config.task": "classification or regression"}},
        )
    job_id = uuid.uuid4()
    row = await conn.fetchrow(
        queries["insert_training_job"],
        job_id,
        shard_of(job_id),
        model["owner_id"],
        body.get("experiment_id"),
        model["id"],
        dataset["id"],
        version["id"],
        backend,
        config,
        run[0] if run else None,
        run[1] if run else None,
        created_by,
    )
    if row is None:
        raise Conflict("this workflow step already started its training job")
    if audit is not None:
        await record_audit(
            conn,
            audit,
            action="create",
            entity_type="training_job",
            entity_id=str(job_id),
            owner_id=row["owner_id"],
            changes={
                "model_id": str(model["id"]),
                "dataset_version": version["version"],
                "config": config,
            },
        )
    return row


async def request_cancel(conn: Conn, audit: AuditContext, job_id: UUID) -> asyncpg.Record:
    """Record the cancel first (status `cancelling`); the actor stops the work."""
    current = await conn.fetchrow(queries["get_training_job"], job_id, audit.principal.owner_filter)
    if current is None:
        raise NotFound(f"training job {job_id} not found")
    if current["status"] in TERMINAL:
        raise Conflict(f"cannot cancel: job is {current['status']}", {"status": current["status"]})
    row = await conn.fetchrow(queries["request_training_cancel"], job_id, None)
    assert row is not None  # noqa: S101
    await record_audit(
        conn,
        audit,
        action="cancel",
        entity_type="training_job",
        entity_id=str(job_id),
        owner_id=row["owner_id"],
    )
    return row
