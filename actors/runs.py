"""Starting runs and recording commands for them: the durable half of every request.

Both only write; the caller commits, then asks the dispatcher to wake the run's owner
(design invariant 4: a command accepted with 2xx is in the database before anyone acts on it).
A start can also be prepared (checked, not written) and handed to `Dispatcher.begin_run`,
whose actor plans while the insert is on its way but acts only after it has committed.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from jsonschema import Draft202012Validator

from actors.workflows import WorkflowStatus
from runtime.audit import AuditContext, record_audit
from runtime.db import Conn, Queryable
from runtime.errors import Conflict, NotFound, ValidationFailed
from runtime.shards import shard_of
from runtime.sql import queries

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def input_errors(schema: dict[str, Any] | None, run_input: Any) -> list[dict[str, str]]:
    """Every way the input breaks the workflow's input schema."""
    if not schema:
        return []
    return _errors(Draft202012Validator(schema), run_input)


def _errors(validator: Draft202012Validator, run_input: Any) -> list[dict[str, str]]:
    return [
        {"path": "/" + "/".join(str(p) for p in e.absolute_path), "message": e.message}
        for e in sorted(validator.iter_errors(run_input), key=lambda e: list(e.absolute_path))
    ]


@dataclass(frozen=True, slots=True)
class Runnable:
    """A published workflow as its runs need it. Fixed once published: only its status can
    change (to archived), and starting a run checks that in the database every time."""

    owner_id: str
    version: int
    definition: dict[str, Any]
    validator: Draft202012Validator | None

    @classmethod
    def of(cls, row: asyncpg.Record) -> Runnable:
        schema = row["input_schema"]
        validator = Draft202012Validator(schema) if schema else None
        return cls(row["owner_id"], row["version"], row["definition"], validator)

    def input_errors(self, run_input: Any) -> list[dict[str, str]]:
        return _errors(self.validator, run_input) if self.validator else []


# Published workflows recently started by this process: a start then takes one round trip.
_RUNNABLE: OrderedDict[UUID, Runnable] = OrderedDict()
RUNNABLE_CACHE_SIZE = 1024


async def _runnable(conn: Queryable, workflow_id: UUID, owner: str | None) -> Runnable:
    """The workflow to run, from this process's cache or the database (404/409 as due)."""
    cached = _RUNNABLE.get(workflow_id)
    if cached is not None and owner in (None, cached.owner_id):
        _RUNNABLE.move_to_end(workflow_id)
        return cached
    workflow = await conn.fetchrow(queries["get_workflow"], workflow_id, owner)
    if workflow is None:
        raise NotFound(f"workflow {workflow_id} not found")
    if workflow["status"] != WorkflowStatus.PUBLISHED:
        _RUNNABLE.pop(workflow_id, None)
        raise Conflict(
            f"cannot run: workflow is {workflow['status']} (only published workflows run)",
            {"status": workflow["status"]},
        )
    runnable = _RUNNABLE[workflow_id] = Runnable.of(workflow)
    if len(_RUNNABLE) > RUNNABLE_CACHE_SIZE:
        _RUNNABLE.popitem(last=False)
    return runnable


@dataclass(frozen=True, slots=True)
class StartedRun:
    """A new run's row and its workflow's definition: what its actor needs to begin."""

    row: asyncpg.Record
    definition: dict[str, Any]

    def actor_row(self) -> dict[str, Any]:
        return {**dict(self.row), "definition": self.definition}


async def start_run(conn: Conn, workflow_id: UUID, **kwargs: Any) -> asyncpg.Record:
    """Create a pending run of a published workflow (the run row is the start command)."""
    return (await insert_run(conn, await prepare_run(conn, workflow_id, **kwargs))).row


@dataclass(frozen=True, slots=True)
class PreparedRun:
    """A start that was checked (the workflow runs, the input fits) but is not written yet."""

    run_id: UUID
    workflow_id: UUID
    workflow: Runnable
    owner: str | None  # whose workflows the caller may start (None: any)
    values: dict[str, Any]  # the run row's columns that the caller sets
    audit: AuditContext | None

    def provisional_row(self) -> dict[str, Any]:
        """The row the insert will return, as far as planning the run's first steps needs it:
        an actor may plan (never act) from it while the insert is on its way."""
        return {
            **self.values,
            "status": "pending",
            "last_seq": 1,
            "output": None,
            "error": None,
            "deadline_at": None,
            "definition": self.workflow.definition,
        }


async def prepare_run(
    conn: Queryable,
    workflow_id: UUID,
    *,
    owner: str | None,
    created_by: str,
    trigger_type: str,
    run_input: dict[str, Any],
    audit: AuditContext | None,
    timeout_s: float | None = None,
    scheduled_for: datetime | None = None,
    parent: tuple[UUID, str, int] | None = None,
    schedule_id: UUID | None = None,
) -> PreparedRun:
    """Check a start (404/409/422 as due) and fix its run id; nothing is written."""
    workflow = await _runnable(conn, workflow_id, owner)
    errors = workflow.input_errors(run_input)
    if errors:
        raise ValidationFailed(
            "run input does not match the workflow's input_schema", {"errors": errors}
        )
    run_id = uuid.uuid4()
    parent_id, parent_step, parent_attempt = parent or (None, None, None)
    values = {
        "id": run_id,
        "shard": shard_of(run_id),
        "workflow_id": workflow_id,
        "workflow_version": workflow.version,
        "owner_id": workflow.owner_id,
        "trigger_type": trigger_type,
        "input": run_input,
        "timeout_s": timeout_s or workflow.definition.get("timeout_s"),
        "scheduled_for": scheduled_for,
        "parent_run_id": parent_id,
        "parent_step_id": parent_step,
        "parent_attempt": parent_attempt,
        "created_by": created_by,
        "schedule_id": schedule_id,
    }
    return PreparedRun(run_id, workflow_id, workflow, owner, values, audit)


async def insert_run(conn: Queryable, prepared: PreparedRun) -> StartedRun:
    """Write a prepared run (the run row is the start command), its first event and its
    audit entry, in one statement."""
    run = await conn.fetchrow(queries["insert_run"], *insert_args(prepared))
    if run is None:
        raise await refusal(conn, prepared)
    return StartedRun(run, prepared.workflow.definition)


def insert_args(prepared: PreparedRun) -> tuple[Any, ...]:
    """insert_run's arguments for a prepared run."""
    v, audit = prepared.values, prepared.audit
    return (
        *(v[column] for column in _INSERTED),
        audit.principal.user_id if audit else None,
        audit.request_id if audit else None,
        {"workflow_id": str(prepared.workflow_id), "trigger": v["trigger_type"]},
    )


async def refusal(conn: Queryable, prepared: PreparedRun) -> Conflict:
    """Why the insert of a prepared run wrote nothing (it returned no row)."""
    workflow_id = prepared.workflow_id
    if workflow_id in _RUNNABLE:  # archived meanwhile? Read it again to say so.
        del _RUNNABLE[workflow_id]
        await _runnable(conn, workflow_id, prepared.owner)  # raises when it is
    return Conflict("this step attempt already started its child run")


# insert_run's $1..$14, in order.
_INSERTED = (
    "id",
    "shard",
    "workflow_id",
    "workflow_version",
    "owner_id",
    "trigger_type",
    "input",
    "timeout_s",
    "scheduled_for",
    "parent_run_id",
    "parent_step_id",
    "parent_attempt",
    "created_by",
    "schedule_id",
)


# command kind -> run statuses it is accepted in
_ACCEPTS = {
    "cancel": frozenset({"pending", "running", "paused"}),
    "resume": frozenset({"paused", "running"}),
    "retry": frozenset({"failed"}),
}


async def record_command(
    conn: Conn, audit: AuditContext, run_id: UUID, kind: str, payload: dict[str, Any]
) -> asyncpg.Record:
    """Check the run can take the command, then store it; returns the run."""
    run = await conn.fetchrow(queries["get_run"], run_id, audit.principal.owner_filter)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    if run["status"] not in _ACCEPTS[kind]:
        raise Conflict(f"cannot {kind}: run is {run['status']}", {"status": run["status"]})
    await conn.execute(queries["insert_command"], run_id, kind, payload, audit.principal.user_id)
    await record_audit(
        conn,
        audit,
        action=kind,
        entity_type="run",
        entity_id=str(run_id),
        owner_id=run["owner_id"],
        changes=payload,
    )
    return run
