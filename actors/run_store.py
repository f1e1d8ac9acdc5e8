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


async def persist(pool: asyncpg.Pool[Any], run_id: UUID, lease: Lease, t: Transition) -> int:
    """Commit `t`; returns the seq before its first event. Raises LeaseLost when fenced."""
    # A step may change twice in one transition (reset, then started): its row takes the last
    # change, while every finished attempt along the way is still recorded once.
    rows = list({c.step_id: c for c in t.steps}.values())
    finished = list(
        {
            (c.step_id, c.attempt): c
            for c in reversed(t.steps)
            if c.recorded_result() and c.attempt > 0
        }.values()
    )
    base = await pool.fetchval(
        queries["persist_run_changes"],
        run_id,
        lease.shard,
        lease.node_id,
        lease.token,
        [c.step_id for c in rows],
        [c.status for c in rows],
        [c.attempt for c in rows],
        [c.output for c in rows],
        [c.error for c in rows],
        [c.wake_at for c in rows],
        t.run_status,
        t.run_error,
        t.run_output,
        [e.name for e in t.events],
        [e.step_id for e in t.events],
        [e.data for e in t.events],
        t.commands,
        t.outcome,
        [c.step_id for c in finished],
        [c.attempt for c in finished],
        [c.recorded_result() for c in finished],
        [c.output for c in finished],
        [c.error for c in finished],
    )
    if base is None:
        raise LeaseLost(f"lease on shard {lease.shard} lost (token {lease.token})")
    return int(base)
