"""Persistence of run transitions: one statement, one transaction, fenced by the shard lease."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.shards import Lease
from runtime.sql import queries


class LeaseLost(Exception):
    """This node no longer owns the run's shard; another node carries on with the run."""


@dataclass(frozen=True, slots=True)
class StepChange:
    step_id: str
    status: str
    attempt: int
    output: Any = None
    error: dict[str, Any] | None = None
    wake_at: datetime | None = None
    # The attempt's result to record once (succeeded/failed); a failure that will be retried
    # leaves the step pending but still records its failed attempt.
    result: str | None = None

    def recorded_result(self) -> str | None:
        if self.result is not None:
            return self.result
        return self.status if self.status in ("succeeded", "failed") else None


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    step_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Transition:
    """Everything one step of the state machine changes, committed together or not at all."""

    steps: list[StepChange] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    run_status: str | None = None
    run_error: dict[str, Any] | None = None
    run_output: Any = None
    commands: list[int] = field(default_factory=list)
    outcome: str | None = None

    def step(self, change: StepChange, event: str, **data: Any) -> None:
        self.steps.append(change)
        self.events.append(Event(event, change.step_id, {"attempt": change.attempt, **data}))

    def run(
        self, status: str, event: str, error: dict[str, Any] | None = None, **data: Any
    ) -> None:
        self.run_status = status
        self.run_error = error
        self.events.append(Event(event, None, {**data, **({"error": error} if error else {})}))

    def __bool__(self) -> bool:
        return bool(self.steps or self.events or self.run_status or self.commands)


@dataclass(frozen=True, slots=True)
class RunChange:
    """One run's transition with the lease it is fenced by: an entry of a group commit."""

    run_id: UUID
    lease: Lease
    transition: Transition
    # Sent before the change it follows has committed: the run's last_seq it must find.
    after_seq: int | None = None


async def persist_many(
    conn: Conn | asyncpg.Pool[Any], changes: list[RunChange]
) -> dict[UUID, int | None]:
    """Commit the changes of several runs (each at most once) in one statement.

    Returns, for each run within its lease, the seq before its first new event, or None when
    a change with `after_seq` did not find the run there; a run left out was fenced off.
    """
    rows = await conn.fetch(
        queries["persist_run_changes"], changes[0].lease.node_id, _document(changes)
    )
    return {row["id"]: row["base_seq"] for row in rows}


@dataclass(frozen=True, slots=True)
class RoundsWritten:
    """What one call committing a run's rounds did."""

    bases: list[int | None]  # each round's base seq; None: not applied (nor any after it)
    ended: dict[str, Any] | None  # the run as get_run_detail reads it, when the rounds ended it
    fenced: bool = False  # the lease was gone: the rounds from the one fenced off on were not

    def lease_lost(self, lease: Lease) -> LeaseLost | None:
        """The error the rounds' actor gets when they were fenced off."""
        if not self.fenced:
            return None
        return LeaseLost(f"lease on shard {lease.shard} lost (token {lease.token})")


async def commit_rounds(conn: Conn, changes: list[RunChange]) -> RoundsWritten:
    """Commit one run's rounds one after another, each in its own transaction, in one call
    (it stops at the first round fenced off: see `RoundsWritten.fenced`)."""
    doc = _rounds_document(changes)
    row = await conn.fetchrow(queries["run_rounds"], changes[0].lease.node_id, doc)
    assert row is not None  # noqa: S101 - a CALL with an INOUT parameter returns one row
    return _rounds_written(row, len(changes))


async def start_rounds(
    conn: Conn, insert: tuple[Any, ...], changes: list[RunChange]
) -> tuple[asyncpg.Record | None, RoundsWritten | None]:
    """Insert a run (`insert`: insert_run's arguments) and commit its first rounds in one
    call, the first round in the insert's transaction.

    Returns the inserted row (None: nothing was inserted, as insert_run returning no row)
    and what the rounds did (None with it). Rounds fenced off leave the run created, pending
    or further, for the shard's next owner.
    """
    doc = _rounds_document(changes)
    row = await conn.fetchrow(queries["start_run"], changes[0].lease.node_id, *insert, doc)
    assert row is not None  # noqa: S101 - a CALL with an INOUT parameter returns one row
    if row["created"] is None:
        return None, None
    return row["created"], _rounds_written(row, len(changes))


def _rounds_written(row: asyncpg.Record, rounds: int) -> RoundsWritten:
    """What the rounds procedure's result row says of `rounds` rounds sent."""
    fenced = bool(row["fenced"])
    bases: list[int | None] = [] if fenced else list(row["bases"])
    final = row["final"]
    ended = None if final is None else {**dict(final), "steps": row["final_steps"]}
    return RoundsWritten(bases + [None] * (rounds - len(bases)), ended, fenced)


Document = dict[str, list[dict[str, Any]]]
_ROWS = ("steps", "events", "commands", "attempts")
_TABLES = ("runs", *_ROWS)


def _document(changes: list[RunChange]) -> Document:
    """The changes of several runs as the one JSON document the change statement reads."""
    # One JSON document instead of thirty arrays: encoded once by the JSON encoder, where
    # arrays of JSON values would be encoded element by element.
    doc: Document = {table: [] for table in _TABLES}
    for change in changes:
        _add_change(doc, change, str(change.run_id))
    return doc


def _rounds_document(changes: list[RunChange]) -> dict[str, Any]:
    """One run's consecutive changes as the rounds procedure reads them (migrations/0011):
    the run and its lease once, then each round's own fields beside its rows, which need no
    run id; empty lists are left out."""
    rounds: list[dict[str, Any]] = []
    for change in changes:
        rows: Document = {table: [] for table in _ROWS}
        _add_rows(rows, change, None)
        rounds.append({**_run_fields(change), **{k: v for k, v in rows.items() if v}})
    first = changes[0]
    return {
        "id": str(first.run_id),
        "shard": first.lease.shard,
        "token": first.lease.token,
        "rounds": rounds,
    }


def _add_change(doc: Document, change: RunChange, rid: str | None) -> None:
    """Add one run's change to `doc`; each row names its run when `rid` is given."""
    lease = change.lease
    doc["runs"].append(
        {"id": str(change.run_id), "shard": lease.shard, "token": lease.token} | _run_fields(change)
    )
    _add_rows(doc, change, rid)


def _run_fields(change: RunChange) -> dict[str, Any]:
    """What a change does to its run itself: its events' count, status, error, output, and
    the seq it expects to find.

    Fields that are null are left out (the statements read a missing field as NULL): on the
    hot path the document is encoded in Python and parsed by PostgreSQL for every commit.
    """
    t = change.transition
    run: dict[str, Any] = {"n_events": len(t.events)}
    _put(run, "status", t.run_status)
    _put(run, "error", t.run_error)
    _put(run, "output", t.run_output)
    _put(run, "expect", change.after_seq)
    return run


def _add_rows(doc: Document, change: RunChange, rid: str | None) -> None:
    """Add one change's step, attempt, event and command rows to `doc` (naming their run when
    `rid` is given)."""
    t = change.transition
    # A step may change twice in one transition (reset, then started): its row takes the last
    # change, while every finished attempt along the way is still recorded once (the first
    # result of an attempt is the one that counts).
    steps: dict[str, dict[str, Any]] = {}
    attempts: dict[tuple[str, int], dict[str, Any]] = {}
    for c in t.steps:
        row = _row(rid, step_id=c.step_id, status=c.status, attempt=c.attempt)
        _put(row, "output", c.output)
        _put(row, "error", c.error)
        _put(row, "wake_at", c.wake_at.isoformat() if c.wake_at else None)
        steps[c.step_id] = row
        result = c.recorded_result()
        if result and c.attempt > 0 and (c.step_id, c.attempt) not in attempts:
            recorded = _row(rid, step_id=c.step_id, attempt=c.attempt, result=result)
            _put(recorded, "output", c.output)
            _put(recorded, "error", c.error)
            attempts[(c.step_id, c.attempt)] = recorded
    doc["steps"].extend(steps.values())
    doc["attempts"].extend(attempts.values())
    for position, e in enumerate(t.events, start=1):
        event = _row(rid, ord=position, event=e.name, data=e.data)
        _put(event, "step_id", e.step_id)
        doc["events"].append(event)
    for command in t.commands:
        doc["commands"].append(_row(rid, id=command, outcome=t.outcome))


def _row(rid: str | None, **fields: Any) -> dict[str, Any]:
    if rid is not None:
        fields["run_id"] = rid
    return fields


def _put(row: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        row[key] = value


async def persist(pool: asyncpg.Pool[Any], run_id: UUID, lease: Lease, t: Transition) -> int:
    """Commit `t` alone; returns the seq before its first event. Raises LeaseLost when fenced."""
    written = await persist_many(pool, [RunChange(run_id, lease, t)])
    base = written.get(run_id)
    if base is None:
        raise LeaseLost(f"lease on shard {lease.shard} lost (token {lease.token})")
    return base
