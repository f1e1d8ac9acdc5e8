"""Workflow lifecycle: drafts are edited, published ones run, archived ones are kept.

Every operation runs in the caller's transaction, locks the row it changes, checks the
transition with one guard, writes the change and its audit entry together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any
from uuid import UUID

import asyncpg
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from actors.definition import check_shape, validate_definition
from runtime.audit import AuditContext, changed_fields, record_audit
from runtime.db import Conn
from runtime.errors import Conflict, NotFound, ValidationFailed
from runtime.sql import queries

ENTITY = "workflow"
EDITABLE_FIELDS = ("name", "description", "workflow_type", "definition", "input_schema")


class WorkflowStatus(StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"
    ARCHIVED = "archived"


# action -> statuses it may start from
_ALLOWED_FROM: dict[str, frozenset[WorkflowStatus]] = {
    "update": frozenset({WorkflowStatus.DRAFT}),
    "publish": frozenset({WorkflowStatus.DRAFT}),
    "archive": frozenset({WorkflowStatus.PUBLISHED}),
}


def ensure_can(action: str, status: str) -> None:
    """Raise Conflict("cannot publish: already published") when the transition is not allowed."""
    if WorkflowStatus(status) not in _ALLOWED_FROM[action]:
        only = " or ".join(sorted(_ALLOWED_FROM[action]))
        raise Conflict(
            f"cannot {action}: workflow is {status} (only {only} workflows allow it)",
            {"status": status},
        )


def check_content(fields: Mapping[str, Any]) -> None:
    """Reject a definition whose shape is broken or an input schema that is not JSON Schema."""
    errors = [e.as_dict() for e in check_shape(fields.get("definition", {}))]
    schema = fields.get("input_schema")
    if schema is not None:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            errors.append(
                {"path": "/input_schema", "code": "invalid_input_schema", "message": exc.message}
            )
    if errors:
        raise ValidationFailed("the workflow is not valid", {"errors": errors})


async def _locked(conn: Conn, workflow_id: UUID, owner: str | None) -> asyncpg.Record:
    row = await conn.fetchrow(queries["lock_workflow"], workflow_id, owner)
    if row is None:
        raise NotFound(f"workflow {workflow_id} not found")
    return row


async def create_workflow(
    conn: Conn, ctx: AuditContext, fields: Mapping[str, Any]
) -> asyncpg.Record:
    """A new draft, version 1 of a new family."""
    check_content(fields)
    row = await _insert(conn, ctx, None, ctx.principal.user_id, 1, fields)
    await record_audit(
        conn,
        ctx,
        action="create",
        entity_type=ENTITY,
        entity_id=str(row["id"]),
        owner_id=row["owner_id"],
        changes={k: fields.get(k) for k in EDITABLE_FIELDS},
    )
    return row


async def _insert(
    conn: Conn,
    ctx: AuditContext,
    family_id: UUID | None,
    owner_id: str,
    version: int,
    fields: Mapping[str, Any],
) -> asyncpg.Record:
    row = await conn.fetchrow(
        queries["insert_workflow"],
        family_id,
        owner_id,
        fields["name"],
        fields.get("description", ""),
        fields.get("workflow_type", "general"),
        fields.get("definition", {"nodes": [], "edges": []}),
        fields.get("input_schema"),
        version,
        ctx.principal.user_id,
    )
    assert row is not None  # noqa: S101 - INSERT ... RETURNING always returns the row
    return row


async def update_workflow(
    conn: Conn,
    ctx: AuditContext,
    workflow_id: UUID,
    change: Callable[[dict[str, Any]], Mapping[str, Any]],
) -> asyncpg.Record:
    """Edit a draft. `change` maps the current editable fields to the new ones; it may raise."""
    row = await _locked(conn, workflow_id, ctx.principal.owner_filter)
    ensure_can("update", row["status"])
    before = {k: row[k] for k in EDITABLE_FIELDS}
    after = {**before, **change(dict(before))}
    check_content(after)
    updated = await conn.fetchrow(
        queries["update_workflow"], workflow_id, *(after[k] for k in EDITABLE_FIELDS)
    )
    assert updated is not None  # noqa: S101 - the row is locked
    await record_audit(
        conn,
        ctx,
        action="update",
        entity_type=ENTITY,
        entity_id=str(workflow_id),
        owner_id=row["owner_id"],
        changes=changed_fields(before, after),
    )
    return updated


async def publish_workflow(conn: Conn, ctx: AuditContext, workflow_id: UUID) -> asyncpg.Record:
    """Validate a draft fully and make it runnable; 422 lists every problem."""
    row = await _locked(conn, workflow_id, ctx.principal.owner_filter)
    ensure_can("publish", row["status"])
    errors = [e.as_dict() for e in validate_definition(row["definition"])]
    if errors:
        raise ValidationFailed(
            f"cannot publish: the definition has {len(errors)} error(s)", {"errors": errors}
        )
    return await _set_status(conn, ctx, row, WorkflowStatus.PUBLISHED, "publish")


async def delete_workflow(
    conn: Conn, ctx: AuditContext, workflow_id: UUID
) -> asyncpg.Record | None:
    """Delete a draft (returns None) or archive a published workflow (returns it)."""
    row = await _locked(conn, workflow_id, ctx.principal.owner_filter)
    if row["status"] == WorkflowStatus.ARCHIVED:
        return row  # deleting twice is not an error
    if row["status"] == WorkflowStatus.PUBLISHED:
        return await _set_status(conn, ctx, row, WorkflowStatus.ARCHIVED, "archive")
    await conn.execute(queries["delete_workflow"], workflow_id)
    await record_audit(
        conn,
        ctx,
        action="delete",
        entity_type=ENTITY,
        entity_id=str(workflow_id),
        owner_id=row["owner_id"],
        changes={"name": row["name"], "version": row["version"]},
    )
    return None


async def _set_status(
    conn: Conn,
    ctx: AuditContext,
    row: asyncpg.Record,
    status: WorkflowStatus,
    action: str,
) -> asyncpg.Record:
    ensure_can(action, row["status"])
    updated = await conn.fetchrow(queries["set_workflow_status"], row["id"], status.value)
    assert updated is not None  # noqa: S101 - the row is locked
    await record_audit(
        conn,
        ctx,
        action=action,
        entity_type=ENTITY,
        entity_id=str(row["id"]),
        owner_id=row["owner_id"],
        changes={"status": {"from": row["status"], "to": status}},
    )
    return updated


async def duplicate_workflow(conn: Conn, ctx: AuditContext, workflow_id: UUID) -> asyncpg.Record:
    """A new draft in the same family with the next version number."""
    source = await conn.fetchrow(queries["get_workflow"], workflow_id, ctx.principal.owner_filter)
    if source is None:
        raise NotFound(f"workflow {workflow_id} not found")
    await conn.execute(queries["lock_workflow_family"], str(source["family_id"]))
    version = await conn.fetchval(queries["next_family_version"], source["family_id"])
    fields = {k: source[k] for k in EDITABLE_FIELDS}
    row = await _insert(conn, ctx, source["family_id"], source["owner_id"], version, fields)
    await record_audit(
        conn,
        ctx,
        action="duplicate",
        entity_type=ENTITY,
        entity_id=str(row["id"]),
        owner_id=row["owner_id"],
        changes={"source_id": str(workflow_id), "version": version},
    )
    return row
