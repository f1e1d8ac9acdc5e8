"""Dataset profile jobs: who computes a version's profile, and what happens when they die.

A profile is claimed by one process (its node id is recorded with the claim), computed in the
background (`actors/profiling.py`), and written back; a shutdown hands it back as pending. A
process that dies instead (SIGKILL, a lost machine) leaves its claims behind: every process
sweeps for profiles claimed by a node whose heartbeat has gone stale, or by its own node id
from before it started, puts them back to pending, and schedules what is pending. Only the
current claim's result is written: a node that was only slow computed for nothing, and
profiling has no side effects, so that costs time, not correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import aiojobs
import asyncpg
from aiohttp import web

from actors.profiling import Outcome, profile_files
from runtime.keys import CONFIG, DB_POOL, STORAGE
from runtime.periodic import every
from runtime.sql import queries
from runtime.storage.base import Storage

log = logging.getLogger(__name__)

CONCURRENT_PROFILES = 2  # each may hold up to profiling.MAX_ROWS rows in memory
RESUME_AT_ONCE = 1000  # pending profiles scheduled per sweep at most
SWEEP_EVERY_S = 30.0


class Profiler:
    """This process's profile jobs: scheduled once each, and swept for abandoned claims."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        storage: Storage,
        node_id: str,
        heartbeat_ttl_s: float,
        scheduler: aiojobs.Scheduler,
    ) -> None:
        self.pool = pool
        self.storage = storage
        self.node_id = node_id
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.scheduler = scheduler
        self._scheduled: set[UUID] = set()  # in the scheduler's hands (queued or running)

    async def schedule(self, version_id: UUID) -> None:
        """Profile a committed version in the background (once, however often asked)."""
        if self.scheduler.closed:  # shutting down: the next start picks the pending version up
            log.info("not profiling version %s now: shutting down", version_id)
            return
        if version_id in self._scheduled:
            return
        self._scheduled.add(version_id)
        await self.scheduler.spawn(self._job(version_id), name=f"profile {version_id}")

    async def _job(self, version_id: UUID) -> None:
        try:
            await run_profile(self.pool, self.storage, version_id, self.node_id)
        finally:
            self._scheduled.discard(version_id)

    async def sweep(self, *, starting: bool = False) -> int:
        """Put profiles abandoned by a dead process back to pending, then schedule what is
        pending; returns how many were put back. `starting`: also this node id's own claims,
        left by the process that had it before this one."""
        reclaimed = await self.pool.fetch(
            queries["reclaim_dataset_profiles"],
            self.node_id if starting else None,
            self.heartbeat_ttl_s,
        )
        for row in reclaimed:
            log.warning("profile of version %s was abandoned by its process; again", row["id"])
        for row in await self.pool.fetch(queries["list_pending_dataset_profiles"], RESUME_AT_ONCE):
            await self.schedule(row["id"])
        return len(reclaimed)


PROFILER = web.AppKey("dataset_profiler", Profiler)


async def profiling_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the profile jobs. At start they take back what a previous process of this
    node left and schedule what is pending, then sweep every SWEEP_EVERY_S; at shutdown the
    running jobs are cancelled and hand their versions back as pending. Register after the
    pool and storage."""
    config = app[CONFIG]
    scheduler = aiojobs.Scheduler(limit=CONCURRENT_PROFILES, close_timeout=5.0)
    # The shard leases' heartbeat says which nodes are alive: a node not heard from for a
    # lease's lifetime is taken for gone.
    profiler = Profiler(app[DB_POOL], app[STORAGE], config.node_id, config.lease_ttl_s, scheduler)
    app[PROFILER] = profiler
    await profiler.sweep(starting=True)
    sweeper = every(SWEEP_EVERY_S, profiler.sweep, "profiles:sweep")
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    await scheduler.close()


async def run_profile(
    pool: asyncpg.Pool[Any], storage: Storage, version_id: UUID, node_id: str
) -> None:
    """Claim a pending profile for `node_id`, compute it, write the result; every outcome is
    recorded."""
    claimed = await pool.fetchrow(queries["claim_dataset_profile"], version_id, node_id)
    if claimed is None:  # another process or an earlier job has it
        return
    try:
        outcome = await profile_files(storage, claimed["dataset_type"], claimed["files"])
    except asyncio.CancelledError:
        await pool.execute(queries["release_dataset_profile"], version_id, node_id)
        raise
    except Exception as exc:  # a bug here must not leave the version running forever
        log.exception("profiling version %s failed", version_id)
        message = f"profiling failed unexpectedly ({type(exc).__name__}); see the server log"
        outcome = Outcome("failed", None, message, None)
    await pool.execute(
        queries["finish_dataset_profile"],
        version_id,
        outcome.status,
        outcome.profile,
        outcome.error,
        outcome.row_count,
        node_id,
    )
