"""Training jobs: submit, list, read, follow logs (SSE), metrics history, cancel."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from aiohttp import web
from aiohttp_apigami import (
    docs,
    match_info_schema,
    querystring_schema,
    request_schema,
    response_schema,
)
from marshmallow import Schema, fields, validate

from actors.training import TERMINAL, create_training_job, request_cancel
from handlers.common import (
    audit_ctx,
    envelope,
    error_responses,
    list_envelope,
    ok,
    paged,
    principal_of,
    record_json,
    validated,
)
from runtime.errors import NotFound, ValidationFailed
from runtime.keys import CONFIG, DB_POOL, DISPATCHER
from runtime.pagination import PageQuerySchema
from runtime.sql import queries

TAGS = ["training"]
STATUSES = (
    "queued",
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancelling",
    "cancelled",
    "timed_out",
)
LOG_BATCH = 500
POLL_S = 1.0


class TrainingConfigSchema(Schema):
    target_column = fields.String(
        required=True, validate=validate.Length(min=1, max=200), metadata={"example": "churned"}
    )
    task = fields.String(validate=validate.OneOf(("classification", "regression")))
    algorithm = fields.String(
        validate=validate.Length(min=1, max=64), metadata={"example": "random_forest"}
    )
    hyperparameters = fields.Dict(load_default=dict, metadata={"example": {"n_estimators": 200}})
    machine_type = fields.String(
        validate=validate.Length(max=64), metadata={"example": "n1-standard-4"}
    )
    accelerator_type = fields.String(validate=validate.Length(max=64), allow_none=True)
    accelerator_count = fields.Integer(validate=validate.Range(min=0, max=16), load_default=0)
    max_runtime_seconds = fields.Integer(
        validate=validate.Range(min=1, max=7 * 86400), metadata={"example": 3600}
    )
    test_fraction = fields.Float(validate=validate.Range(min=0.05, max=0.5))


class TrainingJobCreateSchema(Schema):
    experiment_id = fields.String(
        validate=validate.Length(max=200), allow_none=True, metadata={"example": "churn-2026-11"}
    )
    model_id = fields.UUID(required=True)
    dataset_id = fields.UUID(required=True)
    dataset_version = fields.Integer(
        validate=validate.Range(min=1), metadata={"description": "Default: the latest"}
    )
    config = fields.Nested(TrainingConfigSchema, required=True)


class TrainingJobSchema(Schema):
    id = fields.UUID()
    status = fields.String(validate=validate.OneOf(STATUSES), metadata={"example": "running"})
    raw_state = fields.String(allow_none=True, metadata={"example": "JOB_STATE_RUNNING"})
    backend = fields.String(metadata={"example": "local"})
    model_id = fields.UUID()
    dataset_id = fields.UUID()
    dataset_version_id = fields.UUID()
    model_version_id = fields.UUID(allow_none=True)
    metrics = fields.Dict(metadata={"example": {"accuracy": 0.93}})
    error = fields.String(allow_none=True)
    created_at = fields.DateTime()


class JobListQuerySchema(PageQuerySchema):
    status = fields.String(validate=validate.OneOf(STATUSES))
    model_id = fields.UUID()
    experiment_id = fields.String(validate=validate.Length(min=1, max=200))


class JobPathSchema(Schema):
    id = fields.UUID(required=True)


JobResponse = envelope(TrainingJobSchema, "TrainingJobResponse")
EXAMPLE = {
    "model_id": "0b9f6a2e-5d1c-4f7e-9a43-2c8e1d7b6f10",
    "dataset_id": "6f1c3c8e-8a7b-4c1e-9d2a-0a4c4f3b2e11",
    "config": {
        "target_column": "churned",
        "algorithm": "random_forest",
        "hyperparameters": {"n_estimators": 200},
        "max_runtime_seconds": 3600,
    },
}


def _job_json(row: Any) -> dict[str, Any]:
    return record_json(row, skip=("total", "shard", "last_log_seq"))


def _job_id(request: web.Request) -> UUID:
    job_id: UUID = validated(request, "path")["id"]
    return job_id


async def _owned_job(request: web.Request) -> Any:
    row = await request.app[DB_POOL].fetchrow(
        queries["get_training_job"], _job_id(request), principal_of(request).owner_filter
    )
    if row is None:
        raise NotFound(f"training job {_job_id(request)} not found")
    return row


@docs(
    tags=TAGS,
    summary="Submit a training job",
    description="Trains `model_id` on a dataset "
    "version (the latest unless `dataset_version` is given) on the configured backend "
    "(local scikit-learn, or Vertex AI with STEPWELL_COMPUTE=vertex). A successful job "
    "registers a model version with its metrics and lineage.",
    responses=error_responses(401, 404, 409, 422),
)
@request_schema(TrainingJobCreateSchema, example=EXAMPLE)
@response_schema(JobResponse, 202)
async def create_job(request: web.Request) -> web.Response:
    principal = principal_of(request)
    backend = request.app[CONFIG].compute
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        row = await create_training_job(
            conn,
            audit_ctx(request),
            validated(request),
            owner=principal.owner_filter,
            created_by=principal.user_id,
            backend=backend,
        )
    await request.app[DISPATCHER].wake_job(row["id"])
    return ok(_job_json(row), status=202)


@docs(tags=TAGS, summary="List training jobs", responses=error_responses(401, 422))
@querystring_schema(JobListQuerySchema, put_into="query")
@response_schema(list_envelope(TrainingJobSchema, "TrainingJobListResponse"), 200)
async def list_jobs(request: web.Request) -> web.Response:
    return await paged(
        request,
        queries["list_training_jobs"],
        "status",
        "model_id",
        "experiment_id",
        render=_job_json,
    )


@docs(tags=TAGS, summary="Get a training job", responses=error_responses(401, 404, 422))
@match_info_schema(JobPathSchema, put_into="path")
@response_schema(JobResponse, 200)
async def get_job(request: web.Request) -> web.Response:
    return ok(_job_json(await _owned_job(request)))


@docs(
    tags=TAGS,
    summary="Metric history of a training job, per step, by metric name",
    responses=error_responses(401, 404, 422, ok="History and final metrics"),
)
@match_info_schema(JobPathSchema, put_into="path")
async def job_metrics(request: web.Request) -> web.Response:
    job = await _owned_job(request)
    rows = await request.app[DB_POOL].fetch(queries["list_training_metrics"], job["id"])
    history: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        history.setdefault(r["name"], []).append(
            {"step": r["step"], "value": r["value"], "at": r["at"].isoformat()}
        )
    return ok({"final": job["metrics"], "history": history})


@docs(
    tags=TAGS,
    summary="Cancel a training job",
    description="Answers 202 with the job "
    "`cancelling`; it ends `cancelled` once the work has stopped.",
    responses=error_responses(401, 404, 409, 422),
)
@match_info_schema(JobPathSchema, put_into="path")
@response_schema(JobResponse, 202)
async def cancel_job(request: web.Request) -> web.Response:
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        row = await request_cancel(conn, audit_ctx(request), _job_id(request))
    await request.app[DISPATCHER].wake_job(row["id"])
    return ok(_job_json(row), status=202)


def _after(request: web.Request) -> int:
    text = request.headers.get("Last-Event-ID") or request.query.get("after_seq") or "0"
    if not text.isdigit() or len(text) > 18:
        raise ValidationFailed("Last-Event-ID must be a non-negative integer")
    return int(text)


@docs(
    tags=TAGS,
    summary="Follow a training job's log as Server-Sent Events",
    description="Each line is an event with `id: <seq>`; resume with `Last-Event-ID`. The "
    "stream ends when the job has ended.",
    responses=error_responses(401, 404, 422, ok="text/event-stream of log lines"),
)
@match_info_schema(JobPathSchema, put_into="path")
async def job_logs(request: web.Request) -> web.StreamResponse:
    after = _after(request)
    job = await _owned_job(request)
    pool, bus = request.app[DB_POOL], request.app[DISPATCHER].bus
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    with bus.subscribe(job["id"]) as sub:
        while True:
            # Read the status before the lines: a job that ended has written its last line.
            status = await pool.fetchval(queries["training_job_status"], job["id"])
            rows = await pool.fetch(queries["list_training_logs"], job["id"], after, LOG_BATCH)
            for r in rows:
                line = {
                    "seq": r["seq"],
                    "level": r["level"],
                    "message": r["message"],
                    "at": r["at"].isoformat(),
                }
                await resp.write(
                    f"id: {r['seq']}\nevent: log\ndata: {json.dumps(line)}\n\n".encode()
                )
                after = r["seq"]
            if status in TERMINAL and len(rows) < LOG_BATCH:
                await resp.write(f"event: end\ndata: {json.dumps({'status': status})}\n\n".encode())
                return resp
            if not rows:
                await sub.wait(POLL_S)


def routes() -> list[web.RouteDef]:
    base = "/api/v1/training-jobs"
    return [
        web.post(base, create_job),
        web.get(base, list_jobs, allow_head=False),
        web.get(base + "/{id}", get_job, allow_head=False),
        web.get(base + "/{id}/logs", job_logs, allow_head=False),
        web.get(base + "/{id}/metrics", job_metrics, allow_head=False),
        web.post(base + "/{id}/cancel", cancel_job),
    ]
