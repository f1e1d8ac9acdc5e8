"""Runs: start, read (run, steps, events, logs) and command (cancel, resume, retry)."""

from __future__ import annotations

import asyncio
import contextlib
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
from jsonschema import Draft202012Validator
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from actors.base import Actor
from actors.dispatch import BegunRun
from actors.run import RunActor
from actors.runs import TERMINAL, prepare_run, record_command
from actors.steps import approval
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
from handlers.run_views import event_json, log_line, run_detail
from runtime.bus import Subscription
from runtime.errors import Conflict, Forbidden, NotFound, ValidationFailed
from runtime.json_text import response_json
from runtime.keys import DB_POOL, DISPATCHER
from runtime.pagination import PageQuerySchema
from runtime.sql import queries

TAGS = ["runs"]
RUN_STATUSES = ("pending", "running", "paused", "succeeded", "failed", "cancelled")
TRIGGERS = ("api", "webhook", "schedule", "retry", "subworkflow")


class RunStartSchema(Schema):
    input = fields.Dict(load_default=dict, metadata={"example": {"day": "2026-11-22"}})
    timeout_s = fields.Float(
        validate=validate.Range(min=0.001, max=31_536_000),
        metadata={"description": "Fail the run if it has not finished after this many seconds"},
    )


class StartQuerySchema(Schema):
    wait_s = fields.Float(
        validate=validate.Range(min=0, max=60),
        metadata={"description": "Wait up to this many seconds for the run to end"},
    )


class RunSchema(Schema):
    id = fields.UUID()
    workflow_id = fields.UUID()
    workflow_version = fields.Integer(metadata={"example": 1})
    status = fields.String(validate=validate.OneOf(RUN_STATUSES), metadata={"example": "running"})
    trigger_type = fields.String(validate=validate.OneOf(TRIGGERS), metadata={"example": "api"})
    input = fields.Dict()
    output = fields.Dict(allow_none=True)
    run_context = fields.Dict(
        data_key="context", metadata={"description": "{input, steps: {id: {output, status}}}"}
    )
    step_statuses = fields.Dict(metadata={"example": {"fetch": "succeeded", "train": "running"}})
    error = fields.Dict(allow_none=True)
    owner_id = fields.String()
    parent_run_id = fields.UUID(allow_none=True)
    scheduled_for = fields.DateTime(allow_none=True)
    last_seq = fields.Integer(metadata={"description": "Seq of the latest event"})
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    completed_at = fields.DateTime(allow_none=True)


class RunListQuerySchema(PageQuerySchema):
    workflow_id = fields.UUID()
    status = fields.String(validate=validate.OneOf(RUN_STATUSES))
    trigger_type = fields.String(validate=validate.OneOf(TRIGGERS))
    since = fields.AwareDateTime(metadata={"description": "Created at or after (ISO 8601)"})
    until = fields.AwareDateTime(metadata={"description": "Created before (ISO 8601)"})

    @validates_schema
    def _range(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("since") and data.get("until") and data["since"] >= data["until"]:
            raise ValidationError("since must be before until", "until")


class RunPathSchema(Schema):
    id = fields.UUID(required=True)


class EventsQuerySchema(Schema):
    after_seq = fields.Integer(load_default=0, validate=validate.Range(min=0))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class ResumeSchema(Schema):
    step_id = fields.String(
        required=True, validate=validate.Length(min=1, max=100), metadata={"example": "approve"}
    )
    approved = fields.Boolean(load_default=True)
    data = fields.Raw(load_default=None, metadata={"example": {"comment": "ship it"}})


RunResponse = envelope(RunSchema, "RunResponse")


def _run_id(request: web.Request) -> UUID:
    run_id: UUID = validated(request, "path")["id"]
    return run_id


async def _owned_run(request: web.Request) -> Any:
    run = await request.app[DB_POOL].fetchrow(
        queries["get_run"], _run_id(request), principal_of(request).owner_filter
    )
    if run is None:
        raise NotFound(f"run {_run_id(request)} not found")
    return run


@docs(
    tags=TAGS,
    summary="Start a run of a published workflow",
    description="Input is checked against the workflow's input_schema. With "
    "`X-Idempotency-Key`, a repeated request returns the first run. With `?wait_s=N` the "
    "answer waits up to N seconds for the run to end: 200 with the ended run, or 202 with "
    "the run still going.",
    responses={
        200: {"description": "The run ended within wait_s"},
        **error_responses(401, 404, 409, 422),
    },
)
@match_info_schema(RunPathSchema, put_into="path")
@querystring_schema(StartQuerySchema, put_into="query")
@request_schema(RunStartSchema, example={"input": {"day": "2026-11-22"}})
@response_schema(RunResponse, 202)
async def start(request: web.Request) -> web.Response:
    body = validated(request)
    wait_s = validated(request, "query").get("wait_s")
    principal = principal_of(request)
    dispatcher = request.app[DISPATCHER]
    # The pool, not a connection of it: no transaction block is needed (the run, its first
    # event and its audit entry are one statement), and a start whose workflow this process
    # knows, sent with its run's first rounds, takes no connection of its own at all.
    pool = request.app[DB_POOL]
    with contextlib.ExitStack() as stack:
        prepared = await prepare_run(
            pool,
            _run_id(request),
            owner=principal.owner_filter,
            created_by=principal.user_id,
            trigger_type="api",
            run_input=body["input"],
            timeout_s=body.get("timeout_s"),
            audit=audit_ctx(request),
        )
        # Watching before the run exists: no ending can be missed.
        sub = stack.enter_context(dispatcher.bus.subscribe(prepared.run_id)) if wait_s else None
        begun = await dispatcher.begin_run(pool, prepared, waited_for=bool(wait_s))
        if not wait_s or sub is None:  # the same thing, said for the type checker
            return ok(record_json(begun.row), status=202)
        return await _waited(request, begun, sub, wait_s)


async def _waited(
    request: web.Request, begun: BegunRun, sub: Subscription, wait_s: float
) -> web.Response:
    """Answer when the run ends (200) or when `wait_s` is up (202)."""
    dispatcher, pool = request.app[DISPATCHER], request.app[DB_POOL]
    run_id = begun.row["id"]
    deadline = asyncio.get_running_loop().time() + wait_s
    # The actor the run began with: it may have ended the run, and left, already.
    actor: Actor | None = begun.actor
    while True:
        left = deadline - asyncio.get_running_loop().time()
        # The commit that ended the run may have returned it, read after that commit: as the
        # writer holds it until the actor has adopted the rounds, or as the actor kept it.
        ended = dispatcher.writer.ended(run_id)
        if ended is None and actor is not None:
            # Executing here: its actor stops when the run has ended (or is handed over),
            # so there is nothing to re-read until then.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(left, 0)):
                    await actor.stopped.wait()
            if isinstance(actor, RunActor) and actor.stopped.is_set():
                ended = actor.ended
        run = ended or await pool.fetchrow(queries["get_run_detail"], run_id, None)
        assert run is not None  # noqa: S101 - created above; runs are never deleted
        left = deadline - asyncio.get_running_loop().time()
        if run["status"] in TERMINAL or left <= 0:
            break
        await sub.wait(min(left, 1.0))
        actor = dispatcher.registry.get(str(run_id))
    if run["status"] not in TERMINAL:
        return ok(record_json(run, skip=("steps",)), status=202)
    return ok(run_detail(run))


@docs(tags=TAGS, summary="List runs", responses=error_responses(401, 422))
@querystring_schema(RunListQuerySchema, put_into="query")
@response_schema(list_envelope(RunSchema, "RunListResponse"), 200)
async def list_runs(request: web.Request) -> web.Response:
    return await paged(
        request, queries["list_runs"], "workflow_id", "status", "trigger_type", "since", "until"
    )


@docs(
    tags=TAGS,
    summary="Get a run with its context and step statuses",
    responses=error_responses(401, 404, 422),
)
@match_info_schema(RunPathSchema, put_into="path")
@response_schema(RunResponse, 200)
async def get_run(request: web.Request) -> web.Response:
    run = await request.app[DB_POOL].fetchrow(
        queries["get_run_detail"], _run_id(request), principal_of(request).owner_filter
    )
    if run is None:
        raise NotFound(f"run {_run_id(request)} not found")
    return ok(run_detail(run))


@docs(
    tags=TAGS,
    summary="Steps of a run with every recorded attempt",
    responses=error_responses(401, 404, 422, ok="Steps, each with its attempts"),
)
@match_info_schema(RunPathSchema, put_into="path")
async def list_steps(request: web.Request) -> web.Response:
    run = await _owned_run(request)
    pool = request.app[DB_POOL]
    steps = await pool.fetch(queries["list_run_steps"], run["id"])
    attempts = await pool.fetch(queries["list_step_attempts"], run["id"])
    by_step: dict[str, list[dict[str, Any]]] = {}
    for a in attempts:
        by_step.setdefault(a["step_id"], []).append(record_json(a, skip=("step_id",)))
    return ok([{**record_json(s), "attempts": by_step.get(s["step_id"], [])} for s in steps])


@docs(
    tags=TAGS,
    summary="Events of a run in seq order; page with ?after_seq=",
    responses=error_responses(401, 404, 422, ok="Events after `after_seq`"),
)
@match_info_schema(RunPathSchema, put_into="path")
@querystring_schema(EventsQuerySchema, put_into="query")
async def list_events(request: web.Request) -> web.Response:
    run = await _owned_run(request)
    q = validated(request, "query")
    rows = await request.app[DB_POOL].fetch(
        queries["list_run_events"], run["id"], q["after_seq"], q["limit"]
    )
    events = [event_json(r) for r in rows]
    cursor = events[-1]["seq"] if events else q["after_seq"]
    pagination = {
        "limit": q["limit"],
        "total": run["last_seq"],
        "after_seq": q["after_seq"],
        "next_after_seq": cursor,
    }
    return web.json_response({"data": events, "pagination": pagination}, dumps=response_json)


@docs(
    tags=TAGS,
    summary="A run's log: one readable line per event",
    responses=error_responses(401, 404, 422, ok="Log lines, oldest first"),
)
@match_info_schema(RunPathSchema, put_into="path")
@querystring_schema(EventsQuerySchema, put_into="query")
async def list_logs(request: web.Request) -> web.Response:
    run = await _owned_run(request)
    q = validated(request, "query")
    rows = await request.app[DB_POOL].fetch(
        queries["list_run_events"], run["id"], q["after_seq"], q["limit"]
    )
    return ok([log_line(r) for r in rows])


async def _command(request: web.Request, kind: str, payload: dict[str, Any]) -> web.Response:
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        run = await record_command(conn, audit_ctx(request), _run_id(request), kind, payload)
    await request.app[DISPATCHER].wake(run["id"])
    return ok(record_json(run), status=202)


@docs(
    tags=TAGS,
    summary="Cancel a run",
    description="Running steps are cancelled; the run "
    "ends `cancelled`. Answers 202: the command is stored and delivered.",
    responses=error_responses(401, 404, 409, 422),
)
@match_info_schema(RunPathSchema, put_into="path")
@response_schema(RunResponse, 202)
async def cancel(request: web.Request) -> web.Response:
    return await _command(request, "cancel", {})


@docs(
    tags=TAGS,
    summary="Retry a failed run from its failed step",
    description="Succeeded steps are not run again.",
    responses=error_responses(401, 404, 409, 422),
)
@match_info_schema(RunPathSchema, put_into="path")
@response_schema(RunResponse, 202)
async def retry(request: web.Request) -> web.Response:
    return await _command(request, "retry", {})


@docs(
    tags=TAGS,
    summary="Resume a paused run: approve (or reject) an approval step",
    responses=error_responses(401, 403, 404, 409, 422),
)
@match_info_schema(RunPathSchema, put_into="path")
@request_schema(ResumeSchema, example={"step_id": "approve", "data": {"comment": "ship it"}})
@response_schema(RunResponse, 202)
async def resume(request: web.Request) -> web.Response:
    body = validated(request)
    run = await _owned_run(request)
    await _check_approval(request, run, body)
    principal = principal_of(request)
    payload = {**body, "user_id": principal.user_id}
    return await _command(request, "resume", payload)


async def _check_approval(request: web.Request, run: Any, body: dict[str, Any]) -> None:
    pool = request.app[DB_POOL]
    detail = await pool.fetchrow(queries["get_run_for_actor"], run["id"])
    assert detail is not None  # noqa: S101 - the run was just read
    nodes = {n["id"]: n for n in detail["definition"].get("nodes", [])}
    node = nodes.get(body["step_id"])
    if node is None or node["type"] != "approval":
        raise ValidationFailed(f"step {body['step_id']!r} is not an approval step of this run")
    steps = {s["step_id"]: s for s in await pool.fetch(queries["list_run_steps"], run["id"])}
    status = steps[node["id"]]["status"] if node["id"] in steps else "pending"
    if status != "waiting":
        raise Conflict(f"cannot resume: step {node['id']!r} is {status}", {"status": status})
    config = node.get("data") or {}
    principal = principal_of(request)
    if not approval.may_decide(config, principal.user_id, principal.is_admin):
        raise Forbidden(f"{principal.user_id} is not an approver of step {node['id']!r}")
    schema = config.get("data_schema")
    if schema and body["approved"]:
        errors = [e.message for e in Draft202012Validator(schema).iter_errors(body["data"])]
        if errors:
            raise ValidationFailed("approval data does not match data_schema", {"errors": errors})


def routes() -> list[web.RouteDef]:
    base = "/api/v1/runs"
    return [
        web.post("/api/v1/workflows/{id}/run", start),
        web.post("/api/v1/workflows/{id}/execute", start),
        web.get(base, list_runs, allow_head=False),
        web.get(base + "/{id}", get_run, allow_head=False),
        web.get(base + "/{id}/steps", list_steps, allow_head=False),
        web.get(base + "/{id}/events", list_events, allow_head=False),
        web.get(base + "/{id}/logs", list_logs, allow_head=False),
        web.post(base + "/{id}/cancel", cancel),
        web.post(base + "/{id}/retry", retry),
        web.post(base + "/{id}/resume", resume),
    ]
