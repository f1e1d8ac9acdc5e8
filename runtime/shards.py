"""Shard leases: which process executes which runs (design invariant 3).

Every run hashes to one of ``NUM_SHARDS`` virtual shards. A process owns a shard through a lease
row with an expiry and a fencing token; the token grows on every change of owner, and every
write an owner makes checks it, so a process that lost its lease (paused, partitioned) cannot
write. Processes take a fair share (shards / live nodes), renew every third of the lease time,
and hand back extras when more nodes join. PostgreSQL is the only coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from runtime.sql import queries

log = logging.getLogger(__name__)

NUM_SHARDS = 64


def shard_of(key: UUID) -> int:
    """The virtual shard a run, job or schedule belongs to."""
    return key.int % NUM_SHARDS


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof of ownership to attach to writes: the shard, the owner and its fencing token."""

    shard: int
    node_id: str
    token: int


ShardCallback = Callable[[Mapping[int, Lease]], Awaitable[None]]


class ShardManager:
    """Keeps this node's share of shard leases and reports gains and losses."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        node_id: str,
        *,
        ttl_s: float = 15.0,
        on_acquire: ShardCallback | None = None,
        on_release: ShardCallback | None = None,
    ) -> None:
        self.pool = pool
        self.node_id = node_id
        self.ttl_s = ttl_s
        self.on_acquire = on_acquire
        self.on_release = on_release
        self.owned: dict[int, Lease] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def lease_for(self, shard: int) -> Lease | None:
        return self.owned.get(shard)

    async def start(self) -> None:
        """Take a first share now, then keep it in the background."""
        await self.tick()
        self._task = asyncio.create_task(self._loop(), name=f"shards:{self.node_id}")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await self.tick()
            except (OSError, asyncpg.PostgresError, TimeoutError):
                # Keep trying: leases that lapse meanwhile are reported as lost by the renewal.
                log.exception("shard lease tick failed", extra={"node_id": self.node_id})

    async def tick(self) -> None:
        """Heartbeat, renew what we hold, then move towards a fair share."""
        async with self._lock:
            await self.pool.execute(queries["heartbeat_node"], self.node_id)
            await self._renew()
            live = await self.pool.fetchval(queries["count_live_nodes"], self.ttl_s)
            target = math.ceil(NUM_SHARDS / max(1, int(live or 1)))
            if len(self.owned) < target:
                await self._acquire(target - len(self.owned))
            elif len(self.owned) > target:
                extra = sorted(self.owned)[target:]
                await self._release(extra)

    async def _renew(self) -> None:
        if not self.owned:
            return
        shards = list(self.owned)
        rows = await self.pool.fetch(
            queries["renew_shards"],
            self.node_id,
            shards,
            [self.owned[s].token for s in shards],
            self.ttl_s,
        )
        kept = {r["shard"] for r in rows}
        lost = {s: self.owned.pop(s) for s in shards if s not in kept}
        if lost:
            log.warning("shard leases lost", extra={"shards": sorted(lost)})
            await self._notify(self.on_release, lost)

    async def _acquire(self, count: int) -> None:
        rows = await self.pool.fetch(
            queries["acquire_shards"], self.node_id, count, self.ttl_s, list(self.owned)
        )
        gained = {r["shard"]: Lease(r["shard"], self.node_id, r["token"]) for r in rows}
        if gained:
            self.owned.update(gained)
            await self._notify(self.on_acquire, gained)

    async def _release(self, shards: list[int]) -> None:
        released = {s: self.owned.pop(s) for s in shards if s in self.owned}
        # Stop our actors first so nothing writes while the next owner takes over.
        await self._notify(self.on_release, released)
        await self.pool.execute(queries["release_shards"], self.node_id, list(released))

    async def _notify(self, callback: ShardCallback | None, leases: Mapping[int, Lease]) -> None:
        if callback is not None and leases:
            await callback(leases)

    async def close(self) -> None:
        """Stop renewing and hand every shard back so another node can take over at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        async with self._lock:
            await self._release(sorted(self.owned))
            await self.pool.execute(queries["remove_node"], self.node_id)
