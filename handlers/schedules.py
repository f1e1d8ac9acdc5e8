"""Cron schedules: create or update, list, read, pause, resume, delete, fire history."""

from __future__ import annotations

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

from actors import schedules as sch
from handlers.common import (
    audit_ctx,
    envelope,
    error_responses,
    list_envelope,
    ok,
    page_answer,
    paged,
    principal_of,
    record_json,
    validated,
)
from runtime.errors import NotFound
from runtime.keys import CLOCK, DB_POOL, DISPATCHER
from runtime.pagination import PageQuerySchema, fetch_page
from runtime.sql import queries

TAGS = ["triggers"]
POLICIES = ("skip", "allow", "buffer_one", "cancel_previous")
EXAMPLE = {
    "workflow_id": "6f1c3c8e-8a7b-4c1e-9d2a-0a4c4f3b2e11",
    "cron": "30 2 * * *",
    "timezone": "Europe/Paris",
    "input": {"dataset": "daily"},
    "overlap_policy": "skip",
    "catchup_window_s": 3600,
}


class ScheduleFieldsSchema(Schema):
    """Fields of a schedule; all optional for updates."""

    workflow_id = fields.UUID(metadata={"example": EXAMPLE["workflow_id"]})
    name = fields.String(validate=validate.Length(max=200), metadata={"example": "nightly"})
    cron = fields.String(
        validate=validate.Length(min=9, max=200),
        metadata={"description": "5 fields, or 6 with seconds first", "example": "30 2 * * *"},
    )
    timezone = fields.String(
        validate=validate.Length(min=1, max=64), metadata={"example": "Europe/Paris"}
    )
    input = fields.Dict(metadata={"example": {"dataset": "daily"}})
    enabled = fields.Boolean()
    overlap_policy = fields.String(validate=validate.OneOf(POLICIES), metadata={"example": "skip"})
    catchup_window_s = fields.Integer(
        validate=validate.Range(min=0, max=30 * 86400), metadata={"example": 3600}
    )
    start_at = fields.AwareDateTime(allow_none=True)
    end_at = fields.AwareDateTime(allow_none=True)


class ScheduleCreateSchema(ScheduleFieldsSchema):
    id = fields.UUID(metadata={"description": "Update this schedule instead of creating one"})
    workflow_id = fields.UUID(required=True, metadata={"example": EXAMPLE["workflow_id"]})
    cron = fields.String(
        required=True, validate=validate.Length(min=9, max=200), metadata={"example": "30 2 * * *"}
    )


class ScheduleSchema(ScheduleCreateSchema):
    owner_id = fields.String()
    state = fields.String(metadata={"description": "active, paused, disabled or ended"})
    disabled_reason = fields.String(allow_none=True)
    next_fire_at = fields.DateTime(allow_none=True)
    next_fire_times = fields.List(fields.String(), metadata={"description": "Next 5, local time"})
    last_fire_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()


class FireSchema(Schema):
    fire_time = fields.DateTime()
    outcome = fields.String(metadata={"example": "started"})
    run_id = fields.UUID(allow_none=True)
    reason = fields.String(allow_none=True)
    lateness_ms = fields.Float(metadata={"example": 3.2})


class ScheduleListQuerySchema(PageQuerySchema):
    workflow_id = fields.UUID()
    enabled = fields.Boolean()


class SchedulePathSchema(Schema):
    id = fields.UUID(required=True)


ScheduleResponse = envelope(ScheduleSchema, "ScheduleResponse")


def _json(request: web.Request, row: Any) -> dict[str, Any]:
    now = request.app[CLOCK].now()
    return {
        **record_json(row, skip=("total", "shard", "buffered_fire_at")),
        "state": sch.state_of(row),
        "next_fire_times": sch.preview(row, now),
    }


async def _changed(request: web.Request) -> None:
    dispatcher = request.app[DISPATCHER]
    if dispatcher.cron is not None:
        dispatcher.cron.poke()
    await dispatcher.bus.schedules_changed()


def _path_id(request: web.Request) -> UUID:
    schedule_id: UUID = validated(request, "path")["id"]
    return schedule_id


@docs(
    tags=TAGS,
    summary="Create a schedule (or update one, when `id` is given)",
    description="The workflow must be published. Cron has 5 fields, or 6 with seconds "
    "first; `timezone` is an IANA name. See docs/schedules.md for daylight-saving rules.",
    responses=error_responses(401, 404, 409, 422),
)
@request_schema(ScheduleCreateSchema, example=EXAMPLE)
@response_schema(ScheduleResponse, 201)
async def create_schedule(request: web.Request) -> web.Response:
    body = dict(validated(request))
    schedule_id = body.pop("id", None)
    now = request.app[CLOCK].now()
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        if schedule_id is None:
            row = await sch.create_schedule(conn, audit_ctx(request), body, now)
        else:
            row = await sch.update_schedule(conn, audit_ctx(request), schedule_id, body, now)
    await _changed(request)
    return ok(_json(request, row), status=201 if schedule_id is None else 200)


@docs(tags=TAGS, summary="List schedules", responses=error_responses(401, 422))
@querystring_schema(ScheduleListQuerySchema, put_into="query")
@response_schema(list_envelope(ScheduleSchema, "ScheduleListResponse"), 200)
async def list_schedules(request: web.Request) -> web.Response:
    return await paged(
        request,
        queries["list_schedules"],
        "workflow_id",
        "enabled",
        render=lambda row: _json(request, row),
    )


@docs(
    tags=TAGS,
    summary="Get a schedule with its next fire times",
    responses=error_responses(401, 404, 422),
)
@match_info_schema(SchedulePathSchema, put_into="path")
@response_schema(ScheduleResponse, 200)
async def get_schedule(request: web.Request) -> web.Response:
    row = await request.app[DB_POOL].fetchrow(
        queries["get_schedule"], _path_id(request), principal_of(request).owner_filter
    )
    if row is None:
        raise NotFound(f"schedule {_path_id(request)} not found")
    return ok(_json(request, row))


async def _update(request: web.Request, body: dict[str, Any], action: str) -> web.Response:
    now = request.app[CLOCK].now()
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        row = await sch.update_schedule(
            conn, audit_ctx(request), _path_id(request), body, now, action
        )
    await _changed(request)
    return ok(_json(request, row))


@docs(tags=TAGS, summary="Update a schedule", responses=error_responses(401, 404, 422))
@match_info_schema(SchedulePathSchema, put_into="path")
@request_schema(ScheduleFieldsSchema, example={"cron": "0 3 * * *"})
@response_schema(ScheduleResponse, 200)
async def update_schedule(request: web.Request) -> web.Response:
    return await _update(request, dict(validated(request)), "update")


@docs(
    tags=TAGS,
    summary="Pause a schedule (fires while paused are skipped)",
    responses=error_responses(401, 404, 422),
)
@match_info_schema(SchedulePathSchema, put_into="path")
@response_schema(ScheduleResponse, 200)
async def pause_schedule(request: web.Request) -> web.Response:
    return await _update(request, {"enabled": False}, "pause")


@docs(
    tags=TAGS, summary="Resume a paused schedule from now", responses=error_responses(401, 404, 422)
)
@match_info_schema(SchedulePathSchema, put_into="path")
@response_schema(ScheduleResponse, 200)
async def resume_schedule(request: web.Request) -> web.Response:
    return await _update(request, {"enabled": True}, "resume")


@docs(
    tags=TAGS,
    summary="Delete a schedule",
    responses={204: {"description": "Deleted"}, **error_responses(401, 404, 422)},
)
@match_info_schema(SchedulePathSchema, put_into="path")
async def delete_schedule(request: web.Request) -> web.Response:
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        await sch.delete_schedule(conn, audit_ctx(request), _path_id(request))
    return web.Response(status=204)


@docs(
    tags=TAGS,
    summary="A schedule's fires: outcome, run and lateness, newest first",
    responses=error_responses(401, 404, 422),
)
@match_info_schema(SchedulePathSchema, put_into="path")
@querystring_schema(PageQuerySchema, put_into="query")
@response_schema(list_envelope(FireSchema, "FireListResponse"), 200)
async def list_fires(request: web.Request) -> web.Response:
    q = validated(request, "query")
    async with request.app[DB_POOL].acquire() as conn:
        row = await conn.fetchrow(
            queries["get_schedule"], _path_id(request), principal_of(request).owner_filter
        )
        if row is None:
            raise NotFound(f"schedule {_path_id(request)} not found")
        page = await fetch_page(
            conn, queries["list_schedule_fires"], row["id"], page=q["page"], limit=q["limit"]
        )
    return page_answer(page)


def routes() -> list[web.RouteDef]:
    base = "/api/v1/triggers/schedules"
    return [
        web.post("/api/v1/triggers/schedule", create_schedule),
        web.get(base, list_schedules, allow_head=False),
        web.get(base + "/{id}", get_schedule, allow_head=False),
        web.put(base + "/{id}", update_schedule),
        web.delete(base + "/{id}", delete_schedule),
        web.post(base + "/{id}/pause", pause_schedule),
        web.post(base + "/{id}/resume", resume_schedule),
        web.get(base + "/{id}/fires", list_fires, allow_head=False),
    ]
