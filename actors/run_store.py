"""Persistence of run transitions: one statement, one transaction, fenced by the shard lease."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

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


async def persist_many(pool: asyncpg.Pool[Any], changes: list[RunChange]) -> dict[UUID, int]:
    """Commit the changes of several runs (each at most once) in one statement.

    Returns each written run's seq before its first new event; a run left out was fenced off.
    """
    node_id = changes[0].lease.node_id
    runs: list[list[Any]] = [[] for _ in range(7)]
    steps: list[list[Any]] = [[] for _ in range(7)]
    events: list[list[Any]] = [[] for _ in range(5)]
    done: list[list[Any]] = [[] for _ in range(3)]
    attempts: list[list[Any]] = [[] for _ in range(6)]
    for change in changes:
        rid, t = change.run_id, change.transition
        _append(
            runs,
            rid,
            change.lease.shard,
            change.lease.token,
            len(t.events),
            t.run_status,
            t.run_error,
            t.run_output,
        )
        # A step may change twice in one transition (reset, then started): its row takes the
        # last change, while every finished attempt along the way is still recorded once.
        for c in {c.step_id: c for c in t.steps}.values():
            _append(steps, rid, c.step_id, c.status, c.attempt, c.output, c.error, c.wake_at)
        for position, e in enumerate(t.events, start=1):
            _append(events, rid, position, e.name, e.step_id, e.data)
        for command in t.commands:
            _append(done, rid, command, t.outcome)
        finished = {
            (c.step_id, c.attempt): c
            for c in reversed(t.steps)
            if c.recorded_result() and c.attempt > 0
        }
        for c in finished.values():
            _append(attempts, rid, c.step_id, c.attempt, c.recorded_result(), c.output, c.error)
    rows = await pool.fetch(
        queries["persist_run_changes"], node_id, *runs, *steps, *events, *done, *attempts
    )
    return {row["id"]: int(row["base_seq"]) for row in rows}


def _append(columns: list[list[Any]], *values: Any) -> None:
    for column, value in zip(columns, values, strict=True):
        column.append(value)


async def persist(pool: asyncpg.Pool[Any], run_id: UUID, lease: Lease, t: Transition) -> int:
    """Commit `t` alone; returns the seq before its first event. Raises LeaseLost when fenced."""
    written = await persist_many(pool, [RunChange(run_id, lease, t)])
    if run_id not in written:
        raise LeaseLost(f"lease on shard {lease.shard} lost (token {lease.token})")
    return written[run_id]
