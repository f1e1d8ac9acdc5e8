"""Group commit of run changes: many actors' transitions, one statement per batch.

Each actor still waits for its own change to be committed before it acts on it; what is
shared is the transaction. While a batch is in flight the changes that arrive meanwhile queue
up and leave together in the next one, so under load PostgreSQL parses, plans, locks and
flushes the WAL once per batch instead of once per step, and an idle system sends a batch of
one at once (no timer, no added latency).

A run's consecutive rounds of pure steps can be handed over together: an idle writer sends
them in one procedure call that commits them one after another, each in its own transaction;
a busy one lets each follow its predecessor's commit through the batches. A new run's insert
can go with its first rounds in such a call (`submit_start`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from actors.run_store import (
    LeaseLost,
    RoundsWritten,
    RunChange,
    Transition,
    commit_rounds,
    persist_many,
    start_rounds,
)
from runtime.db import Conn
from runtime.shards import Lease
from runtime.sql import queries

log = logging.getLogger(__name__)
MAX_BATCH = 128
# Batches in flight at once: while one is executed the next are encoded and sent. Three gave
# 3,050-3,970 durable steps/s against two's 2,680-2,850 with 64 runs in flight (four: no more).
MAX_IN_FLIGHT = 3

Waiter = tuple[RunChange, "asyncio.Future[int | None]"]
T = TypeVar("T")


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
        # Flushers still able to take from the queue. Counted down the moment one stops
        # looking (not when its task is reaped), so no change is ever left without one.
        self._active = 0
        # Connections kept between batches, at most one per batch in flight.
        self._idle: list[PoolConnectionProxy[Any]] = []
        # Each run's most recent change still outstanding.
        self._latest: dict[UUID, asyncio.Future[int | None]] = {}
        # Runs whose rounds ended them, as they were read right after: see `ended`.
        self._ended: dict[UUID, dict[str, Any]] = {}
        self.batches = 0
        self.changes = 0

    def submit(
        self, run_id: UUID, lease: Lease, t: Transition, after_seq: int | None = None
    ) -> asyncio.Future[int | None]:
        """Queue `t` for the next batch; the future holds its base seq once committed.

        A change given `after_seq` (the last_seq the change before it leaves behind) waits
        for that change's commit, and applies only if the run is exactly there; otherwise it
        writes nothing and its future holds None. Raises LeaseLost (through the future) when
        the run's lease is gone.
        """
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        waiter = (RunChange(run_id, lease, t, after_seq), future)
        before = self._latest.get(run_id)
        self._latest[run_id] = future
        future.add_done_callback(lambda done: self._forget(run_id, done))
        if after_seq is None or before is None or before.done():
            self._enqueue(waiter)
        else:  # it goes in the first batch after its predecessor's
            before.add_done_callback(lambda _: self._enqueue(waiter))
        return future

    def submit_rounds(
        self, run_id: UUID, lease: Lease, rounds: list[Transition], after_seqs: list[int | None]
    ) -> list[asyncio.Future[int | None]]:
        """Queue consecutive rounds of one run; a future per round, as `submit` gives.

        The first round is sent as `submit` would send it, the others each with the
        `after_seq` its predecessor leaves. When the writer is idle, all of them go in one
        call that commits them one after another, each in its own transaction, with no
        round trip in between; otherwise each follows its predecessor as `submit` arranges.
        """
        before = self._latest.get(run_id)
        if len(rounds) < 2 or not self.idle() or (before is not None and not before.done()):
            return [
                self.submit(run_id, lease, t, after)
                for t, after in zip(rounds, after_seqs, strict=True)
            ]
        waiters = self._waiters(run_id, lease, rounds, after_seqs)
        self._start(lambda: self._commit_rounds(waiters))
        return [future for _, future in waiters]

    def submit_start(
        self,
        run_id: UUID,
        lease: Lease,
        insert: tuple[Any, ...],
        rounds: list[Transition],
        after_seqs: list[int | None],
        created: asyncio.Future[asyncpg.Record | None],
    ) -> list[asyncio.Future[int | None]]:
        """Insert a run (`insert`: insert_run's arguments) and commit its first rounds in one
        call, the first round in the insert's transaction; sent at once, however busy the
        writer is (an insert cannot join a batch).

        `created` gets the inserted row, or None when nothing was inserted (as insert_run
        returning no row); each round's future then is cancelled, and otherwise holds what
        `submit_rounds` gives. Should the call fail, `created` still says whether the run
        exists (it is read again), and the rounds' futures hold the error.
        """
        waiters = self._waiters(run_id, lease, rounds, after_seqs)
        self._start(lambda: self._commit_start(insert, created, waiters))
        return [future for _, future in waiters]

    def idle(self) -> bool:
        """Nothing queued and a batch could leave at once."""
        return not self._queue and self._active < self.max_in_flight

    def _waiters(
        self, run_id: UUID, lease: Lease, rounds: list[Transition], after_seqs: list[int | None]
    ) -> list[Waiter]:
        """A future per round of one run sent in one call; the last is the run's latest."""
        loop = asyncio.get_running_loop()
        waiters: list[Waiter] = [
            (RunChange(run_id, lease, t, after), loop.create_future())
            for t, after in zip(rounds, after_seqs, strict=True)
        ]
        last = waiters[-1][1]
        self._latest[run_id] = last
        last.add_done_callback(lambda done: self._forget(run_id, done))
        return waiters

    def ended(self, run_id: UUID) -> dict[str, Any] | None:
        """The run as get_run_detail reads it, when its last rounds call ended it and its
        actor has not taken it yet (see `take_ended`): whoever waits for the run's end may
        answer with it before the actor has adopted the rounds.

        Only the rounds call returns it; a run that ended through a batch has none.
        """
        return self._ended.get(run_id)

    def take_ended(self, run_id: UUID) -> dict[str, Any] | None:
        """`ended`, taken: the run's actor takes it as it finishes or stops."""
        return self._ended.pop(run_id, None)

    def _forget(self, run_id: UUID, future: asyncio.Future[int | None]) -> None:
        if self._latest.get(run_id) is future:
            del self._latest[run_id]

    def _enqueue(self, waiter: Waiter) -> None:
        self._queue.append(waiter)
        if self._active < self.max_in_flight:
            self._start()

    def _start(self, first: Callable[[], Awaitable[None]] | None = None) -> None:
        self._active += 1
        task = asyncio.create_task(self._flush(first), name="runs:writer")
        self._flushers.add(task)
        task.add_done_callback(self._flushers.discard)

    async def _flush(self, first: Callable[[], Awaitable[None]] | None = None) -> None:
        """Do `first` (one run's rounds call), then commit batches until the queue is empty
        (every sender drains it)."""
        try:
            if first is not None:
                await first()
            while self._queue:
                await self._commit(self._take_batch())
        finally:
            self._active -= 1

    def _take_batch(self) -> list[Waiter]:
        """The oldest changes, one per run: a run's next change waits for a later batch."""
        batch: list[Waiter] = []
        runs: set[UUID] = set()
        left: list[Waiter] = []
        for waiter in self._queue:
            run_id = waiter[0].run_id
            if run_id in runs or len(batch) >= self.max_batch:
                left.append(waiter)
            else:
                runs.add(run_id)
                batch.append(waiter)
        self._queue = left
        return batch

    async def _commit(self, batch: list[Waiter]) -> None:
        try:
            written = await self._execute(persist_many, [change for change, _ in batch])
        except Exception as exc:  # the error belongs to the change that caused it
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            # One bad change (say an output PostgreSQL refuses) must not fail the others:
            # commit each alone so every actor gets its own outcome.
            log.warning(
                "a batch of %d run changes failed (%s); committing each alone", len(batch), exc
            )
            for waiter in batch:
                await self._commit([waiter])
            return
        self.batches += 1
        self.changes += len(batch)
        for change, future in batch:
            if change.run_id not in written:
                lease = change.lease
                _settle(
                    future, LeaseLost(f"lease on shard {lease.shard} lost (token {lease.token})")
                )
            elif not future.done():
                future.set_result(written[change.run_id])

    async def _commit_rounds(self, waiters: list[Waiter]) -> None:
        """One run's rounds in one call; each future gets its round's outcome."""
        try:
            written = await self._execute(commit_rounds, [change for change, _ in waiters])
        except Exception as exc:  # an error the actor should crash on
            for _, future in waiters:
                _settle(future, exc)
            return
        self._settle_rounds(waiters, written)

    def _settle_rounds(self, waiters: list[Waiter], written: RoundsWritten) -> None:
        self.batches += 1
        self.changes += len(waiters)
        lost = written.lease_lost(waiters[0][0].lease)
        if written.ended is not None:
            self._ended[waiters[0][0].run_id] = written.ended
        for (_, future), base in zip(waiters, written.bases, strict=True):
            if lost is not None:
                _settle(future, lost)
            elif not future.done():
                future.set_result(base)

    async def _commit_start(
        self,
        insert: tuple[Any, ...],
        created: asyncio.Future[asyncpg.Record | None],
        waiters: list[Waiter],
    ) -> None:
        """One run's insert and first rounds in one call; see `submit_start`."""
        changes = [change for change, _ in waiters]
        try:
            row, written = await self._execute(
                lambda conn, sent: start_rounds(conn, insert, sent), changes
            )
        except Exception as exc:
            # The call may have failed after its first commit: only the database knows.
            run_id = changes[0].run_id
            try:
                row = await self.pool.fetchrow(queries["get_run"], run_id, None)
            except Exception:
                row = None
            if not created.done():
                if row is None:
                    created.set_exception(exc)
                else:
                    created.set_result(row)
            for _, future in waiters:
                if row is None:
                    future.cancel()
                else:
                    _settle(future, exc)
            return
        if not created.done():
            created.set_result(row)
        if row is None or written is None:
            for _, future in waiters:
                future.cancel()
            return
        self._settle_rounds(waiters, written)

    async def _execute(
        self, write: Callable[[Conn, list[RunChange]], Awaitable[T]], changes: list[RunChange]
    ) -> T:
        """`write` on a connection this writer keeps (no pool round per commit)."""
        conn = self._idle.pop() if self._idle else await self.pool.acquire()
        try:
            result = await write(conn, changes)
        except BaseException:
            # Back to the pool, which closes it if broken; the next batch takes a fresh one.
            await self.pool.release(conn)
            raise
        # Kept for the batches in flight at most: starts, sent each in a call of their own,
        # may borrow more at once, and those waiting for a connection wait on the pool.
        if len(self._idle) < self.max_in_flight:
            self._idle.append(conn)
        else:
            await self.pool.release(conn)
        return result

    async def close(self) -> None:
        """Wait for the batches in flight (their actors are told, not left hanging)."""
        if self._flushers:
            await asyncio.gather(*self._flushers, return_exceptions=True)
        while self._idle:
            await self.pool.release(self._idle.pop())


def _settle(future: asyncio.Future[int | None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
