"""Group commit of run changes: many actors' transitions, one statement per batch.

Each actor still waits for its own change to be committed before it acts on it; what is
shared is the transaction. While a batch is in flight the changes that arrive meanwhile queue
up and leave together in the next one, so under load PostgreSQL parses, plans, locks and
flushes the WAL once per batch instead of once per step, and an idle system sends a batch of
one at once (no timer, no added latency).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import UUID

import asyncpg

from actors.run_store import LeaseLost, RunChange, Transition, persist_many
from runtime.shards import Lease

log = logging.getLogger(__name__)
MAX_BATCH = 128
# Two batches in flight: one is being executed while the next is encoded and sent.
MAX_IN_FLIGHT = 2

Waiter = tuple[RunChange, "asyncio.Future[int]"]


class RunWriter:
    """Commits run transitions for the actors of one process, in batches."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        max_batch: int = MAX_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._queue: list[Waiter] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.changes = 0

    async def persist(self, run_id: UUID, lease: Lease, t: Transition) -> int:
        """Commit `t`; returns the seq before its first event. Raises LeaseLost when fenced."""
        return await self.submit(run_id, lease, t)

    def submit(self, run_id: UUID, lease: Lease, t: Transition) -> asyncio.Future[int]:
        """Queue `t` for the next batch; the future holds its base seq once committed.

        The caller must not submit a run again before its previous change has committed.
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((RunChange(run_id, lease, t), future))
        if len(self._flushers) < self.max_in_flight:
            task = asyncio.create_task(self._flush(), name="runs:writer")
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        return future

    async def _flush(self) -> None:
        while self._queue:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            await self._commit(batch)

    async def _commit(self, batch: list[Waiter]) -> None:
        try:
            written = await persist_many(self.pool, [change for change, _ in batch])
        except Exception as exc:  # the error belongs to the change that caused it
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            # One bad change (say an output PostgreSQL refuses) must not fail the others:
            # commit each alone so every actor gets its own outcome.
            for waiter in batch:
                await self._commit([waiter])
            return
        self.batches += 1
        self.changes += len(batch)
        for change, future in batch:
            base = written.get(change.run_id)
            if base is None:
                lease = change.lease
                _settle(
                    future, LeaseLost(f"lease on shard {lease.shard} lost (token {lease.token})")
                )
            elif not future.done():
                future.set_result(base)

    async def close(self) -> None:
        """Wait for the batches in flight (their actors are told, not left hanging)."""
        if self._flushers:
            await asyncio.gather(*self._flushers, return_exceptions=True)


def _settle(future: asyncio.Future[int], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
