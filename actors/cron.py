"""CronActor: one per process; fires the schedules in the shards this process owns.

It sleeps until the earliest due fire (at most `MAX_SLEEP_S`, so schedules changed elsewhere and
buffered fires waiting for a run to end are picked up), and is poked early when a schedule
changes. Firing itself is in `schedule_fire`; this actor only decides when to look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from actors.base import Actor, ActorStopped, MailboxFull
from actors.schedule_fire import fire_schedule
from runtime.clock import Clock
from runtime.sql import queries

log = logging.getLogger(__name__)
MAX_SLEEP_S = 2.0
BATCH = 100
PARALLEL_FIRES = 8


@dataclass(frozen=True, slots=True)
class Tick:
    """Look for due fires now."""


class CronActor(Actor):
    """Fires due schedules of owned shards; never two runs for one fire (see schedule_fire)."""

    def __init__(self, pool: asyncpg.Pool[Any], dispatcher: Any, clock: Clock, node_id: str):
        super().__init__(f"cron:{node_id}", mailbox_size=16)
        self.pool = pool
        self.dispatcher = dispatcher
        self.clock = clock
        self.node_id = node_id
        self._timer: asyncio.TimerHandle | None = None

    async def on_start(self) -> None:
        self.poke()

    async def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def is_idle(self) -> bool:
        return False  # the process's only scheduler: never reaped

    def poke(self) -> None:
        """Look now (a schedule changed, or a shard was gained)."""
        with contextlib.suppress(MailboxFull, ActorStopped):
            self.tell(Tick())

    async def receive(self, message: object) -> Any:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            await self._fire_due()
        except (OSError, asyncpg.PostgresError):
            log.exception("cron tick failed; retrying")
        await self._arm()
        return None

    async def _fire_due(self) -> None:
        shards = list(self.dispatcher.shards.owned)
        if not shards:
            return
        # Schedules are independent rows: fire several at once so a burst of schedules due in
        # the same second is not served one transaction after another.
        limit = asyncio.Semaphore(PARALLEL_FIRES)

        async def fire(schedule_id: UUID) -> None:
            async with limit:
                await self._fire(schedule_id)

        while True:
            ids = await self.pool.fetch(queries["due_schedules"], shards, self.clock.now(), BATCH)
            await asyncio.gather(*(fire(row["id"]) for row in ids))
            if len(ids) < BATCH:
                return

    async def _fire(self, schedule_id: UUID) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            result = await fire_schedule(conn, schedule_id, self.clock, self.node_id)
        for late in result.lateness_ms:
            self.dispatcher.fire_started(late)
        for run_id in result.runs:
            await self.dispatcher.wake(run_id)

    async def _arm(self) -> None:
        shards = list(self.dispatcher.shards.owned)
        next_at = await self.pool.fetchval(queries["next_due_time"], shards) if shards else None
        delay = MAX_SLEEP_S
        if next_at is not None:
            delay = min(MAX_SLEEP_S, max(0.0, (next_at - self.clock.now()).total_seconds()))
        self._timer = asyncio.get_running_loop().call_later(delay, self.poke)
