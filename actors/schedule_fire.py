"""Firing one schedule: every due fire time exactly once, with its overlap policy.

Runs inside one transaction that holds the schedule's row lock (SKIP LOCKED, so a second
process moves on). The fire row's primary key (schedule, fire time) is claimed before a run is
created, so no restart, second process or clock hiccup can start two runs for one fire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from actors.runs import start_run
from actors.schedule_times import due_fires, next_fires
from runtime.clock import Clock
from runtime.db import Conn
from runtime.errors import ApiError
from runtime.sql import queries

# A fire later than its catch-up window by more than this is "missed", not started late.
MISFIRE_TOLERANCE_S = 5.0
MAX_FIRES_PER_TICK = 1000


@dataclass(slots=True)
class FireResult:
    """Runs to wake after the commit, and how late each fire started (ms)."""

    runs: list[UUID] = field(default_factory=list)
    lateness_ms: list[float] = field(default_factory=list)


@dataclass(slots=True)
class _Firing:
    conn: Conn
    schedule: asyncpg.Record
    node_id: str
    result: FireResult
    active: list[UUID]
    buffered: datetime | None
    clock: Clock


async def fire_schedule(conn: Conn, schedule_id: UUID, clock: Clock, node_id: str) -> FireResult:
    """Fire what is due for one schedule; the caller owns the transaction."""
    now = clock.now()
    result = FireResult()
    schedule = await conn.fetchrow(queries["lock_due_schedule"], schedule_id)
    if schedule is None:
        return result  # another process is firing it, or it was paused meanwhile
    active = [r["id"] for r in await conn.fetch(queries["active_schedule_runs"], schedule_id)]
    f = _Firing(conn, schedule, node_id, result, active, schedule["buffered_fire_at"], clock)
    if f.buffered is not None and not f.active:
        await _start(f, f.buffered)
        f.buffered = None
    next_at = schedule["next_fire_at"]
    due: list[datetime] = []
    if next_at is not None and next_at <= now:
        due = due_fires(schedule["cron"], schedule["timezone"], next_at, now, MAX_FIRES_PER_TICK)
    for fire_time in due:
        if not (await _fire_one(f, fire_time, now)):
            break  # the schedule was disabled (its workflow cannot run any more)
    if due:
        following = next_fires(
            schedule["cron"],
            schedule["timezone"],
            due[-1],
            1,
            schedule["start_at"],
            schedule["end_at"],
        )
        next_at = following[0] if following else None
    await conn.execute(
        queries["advance_schedule"], schedule_id, next_at, due[-1] if due else None, f.buffered
    )
    return result


async def _fire_one(f: _Firing, fire_time: datetime, now: datetime) -> bool:
    s = f.schedule
    late = now - fire_time
    if late > timedelta(seconds=s["catchup_window_s"] + MISFIRE_TOLERANCE_S):
        await _claim(f, fire_time, "missed", "outside the catch-up window", now)
        return True
    policy = s["overlap_policy"]
    if f.active and policy == "skip":
        await _claim(f, fire_time, "skipped", "previous run still active", now)
        return True
    if f.active and policy == "buffer_one":
        if f.buffered is None and await _claim(f, fire_time, "buffered", None, now):
            f.buffered = fire_time
        elif f.buffered is not None:
            await _claim(f, fire_time, "skipped", "a fire is already buffered", now)
        return True
    if f.active and policy == "cancel_previous":
        for run_id in f.active:
            await f.conn.execute(
                queries["insert_command"],
                run_id,
                "cancel",
                {"reason": "cancel_previous"},
                f"schedule:{s['id']}",
            )
            f.result.runs.append(run_id)
        f.active = []
    if not await _claim(f, fire_time, "started", None, now):
        return True
    return await _start(f, fire_time)


async def _claim(
    f: _Firing, fire_time: datetime, outcome: str, reason: str | None, now: datetime
) -> bool:
    lateness = (f.clock.now() - fire_time).total_seconds() * 1000
    row = await f.conn.fetchrow(
        queries["claim_fire"], f.schedule["id"], fire_time, outcome, reason, lateness, f.node_id
    )
    return row is not None


async def _start(f: _Firing, fire_time: datetime) -> bool:
    s = f.schedule
    try:
        run = await start_run(
            f.conn,
            s["workflow_id"],
            owner=s["owner_id"],
            created_by=f"schedule:{s['id']}",
            trigger_type="schedule",
            run_input=dict(s["input"]),
            audit=None,
            scheduled_for=fire_time,
            schedule_id=s["id"],
        )
    except ApiError as exc:
        reason = f"stopped firing: {exc.message}"
        await f.conn.execute(
            queries["set_fire_outcome"], s["id"], fire_time, "failed", None, reason
        )
        await f.conn.execute(queries["disable_schedule"], s["id"], reason)
        return False
    await f.conn.execute(
        queries["set_fire_outcome"], s["id"], fire_time, "started", run["id"], None
    )
    f.active.append(run["id"])
    f.result.runs.append(run["id"])
    f.result.lateness_ms.append((f.clock.now() - fire_time).total_seconds() * 1000)
    return True
