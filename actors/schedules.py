"""Schedules: validated, stored with their next fire time, audited."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from actors.runs import input_errors
from actors.schedule_times import ScheduleError, check_cron, next_fires, zone
from actors.workflows import WorkflowStatus
from runtime.audit import AuditContext, changed_fields, record_audit
from runtime.db import Conn
from runtime.errors import NotFound, ValidationFailed
from runtime.shards import shard_of
from runtime.sql import queries

ENTITY = "schedule"
PREVIEW = 5
FIELDS = (
    "workflow_id",
    "name",
    "cron",
    "timezone",
    "input",
    "enabled",
    "overlap_policy",
    "catchup_window_s",
    "start_at",
    "end_at",
)
DEFAULTS: dict[str, Any] = {
    "name": "",
    "timezone": "UTC",
    "input": {},
    "enabled": True,
    "overlap_policy": "skip",
    "catchup_window_s": 0,
    "start_at": None,
    "end_at": None,
}


def state_of(schedule: Mapping[str, Any]) -> str:
    if not schedule["enabled"]:
        return "disabled" if schedule.get("disabled_reason") else "paused"
    return "active" if schedule["next_fire_at"] is not None else "ended"


def preview(schedule: Mapping[str, Any], now: datetime) -> list[str]:
    """The next fire times, in the schedule's own zone."""
    if not schedule["enabled"]:
        return []
    tz = zone(schedule["timezone"])
    after = max(now, schedule["next_fire_at"] or now)
    first = [schedule["next_fire_at"]] if schedule["next_fire_at"] else []
    rest = (
        next_fires(
            schedule["cron"],
            schedule["timezone"],
            after,
            PREVIEW - len(first),
            schedule["start_at"],
            schedule["end_at"],
        )
        if first
        else []
    )
    return [t.astimezone(tz).isoformat() for t in [*first, *rest][:PREVIEW]]


async def _check(conn: Conn, fields: Mapping[str, Any], owner: str | None) -> asyncpg.Record:
    """The schedule's workflow, once every field has been checked; 422 lists the problems."""
    errors: dict[str, str] = {}
    try:
        check_cron(fields["cron"])
    except ScheduleError as exc:
        errors["cron"] = str(exc)
    try:
        zone(fields["timezone"])
    except ScheduleError as exc:
        errors["timezone"] = str(exc)
    if fields["start_at"] and fields["end_at"] and fields["start_at"] >= fields["end_at"]:
        errors["end_at"] = "end_at must be after start_at"
    workflow = await conn.fetchrow(queries["get_workflow"], fields["workflow_id"], owner)
    if workflow is None:
        raise NotFound(f"workflow {fields['workflow_id']} not found")
    if workflow["status"] != WorkflowStatus.PUBLISHED:
        errors["workflow_id"] = (
            f"workflow is {workflow['status']}: only published workflows can be scheduled"
        )
    problems = input_errors(workflow["input_schema"], fields["input"])
    if problems:
        errors["input"] = "; ".join(f"{p['path']}: {p['message']}" for p in problems)
    if errors:
        raise ValidationFailed("the schedule is not valid", {"fields": errors})
    return workflow


def _first_fire(fields: Mapping[str, Any], now: datetime) -> datetime | None:
    if not fields["enabled"]:
        return None
    found = next_fires(
        check_cron(fields["cron"]), fields["timezone"], now, 1, fields["start_at"], fields["end_at"]
    )
    return found[0] if found else None


async def create_schedule(
    conn: Conn, ctx: AuditContext, body: Mapping[str, Any], now: datetime
) -> asyncpg.Record:
    fields = {**DEFAULTS, **body}
    fields["cron"] = " ".join(str(fields["cron"]).split())
    workflow = await _check(conn, fields, ctx.principal.owner_filter)
    schedule_id = uuid.uuid4()
    row = await conn.fetchrow(
        queries["insert_schedule"],
        schedule_id,
        shard_of(schedule_id),
        workflow["owner_id"],
        *(fields[k] for k in FIELDS),
        _first_fire(fields, now),
        ctx.principal.user_id,
    )
    assert row is not None  # noqa: S101
    await record_audit(
        conn,
        ctx,
        action="create",
        entity_type=ENTITY,
        entity_id=str(schedule_id),
        owner_id=row["owner_id"],
        changes={k: fields[k] for k in FIELDS},
    )
    return row


async def update_schedule(
    conn: Conn,
    ctx: AuditContext,
    schedule_id: UUID,
    body: Mapping[str, Any],
    now: datetime,
    action: str = "update",
) -> asyncpg.Record:
    """Change fields; the next fire is computed afresh from now (a pause skips fires)."""
    current = await conn.fetchrow(queries["lock_schedule"], schedule_id, ctx.principal.owner_filter)
    if current is None:
        raise NotFound(f"schedule {schedule_id} not found")
    before = {k: current[k] for k in FIELDS}
    fields = {**before, **body}
    fields["cron"] = " ".join(str(fields["cron"]).split())
    await _check(conn, fields, ctx.principal.owner_filter)
    row = await conn.fetchrow(
        queries["update_schedule"],
        schedule_id,
        *(fields[k] for k in FIELDS),
        _first_fire(fields, now),
        None,
    )
    assert row is not None  # noqa: S101
    await record_audit(
        conn,
        ctx,
        action=action,
        entity_type=ENTITY,
        entity_id=str(schedule_id),
        owner_id=row["owner_id"],
        changes=changed_fields(before, fields),
    )
    return row


async def delete_schedule(conn: Conn, ctx: AuditContext, schedule_id: UUID) -> None:
    current = await conn.fetchrow(queries["lock_schedule"], schedule_id, ctx.principal.owner_filter)
    if current is None:
        raise NotFound(f"schedule {schedule_id} not found")
    await conn.execute(queries["delete_schedule"], schedule_id)
    await record_audit(
        conn,
        ctx,
        action="delete",
        entity_type=ENTITY,
        entity_id=str(schedule_id),
        owner_id=current["owner_id"],
        changes={"cron": current["cron"]},
    )
