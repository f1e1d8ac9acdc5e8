"""Group commit of run changes, against a real PostgreSQL and no app around it.

What an actor relies on: its change commits in a shared transaction and it learns its own
outcome; a change given before its predecessor has committed applies only after that commit, or
not at all; a fenced-off or broken change fails alone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from actors.run_store import LeaseLost, StepChange, Transition
from actors.run_writer import RunWriter
from runtime.db import create_pool
from runtime.shards import Lease
from runtime.sql import queries

NODE = "writer-test"
LEASE = Lease(shard=7, node_id=NODE, token=3)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    pool = await create_pool(database_url, min_size=1, max_size=6)
    await pool.execute(
        "UPDATE shard_leases SET owner = $1, token = $2, expires_at = now() + interval '1 hour'"
        " WHERE shard = $3",
        NODE,
        LEASE.token,
        LEASE.shard,
    )
    try:
        yield pool
    finally:
        await pool.close()


async def new_run(pool: asyncpg.Pool[Any]) -> uuid.UUID:
    """A run row (and its workflow) on the leased shard, at last_seq 1."""
    run_id = uuid.uuid4()
    await pool.fetchrow(queries["insert_run"], *insert_args(await new_workflow(pool), run_id))
    return run_id


async def new_workflow(pool: asyncpg.Pool[Any], status: str = "published") -> uuid.UUID:
    workflow_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO workflows (id, family_id, owner_id, name, workflow_type, definition,"
        " status, version, created_by) VALUES ($1, $1, 'alice', 'w', 'general', '{}',"
        " $2, 1, 'alice')",
        workflow_id,
        status,
    )
    return workflow_id


def insert_args(workflow_id: uuid.UUID, run_id: uuid.UUID) -> tuple[Any, ...]:
    """insert_run's arguments for a run of `workflow_id` on the leased shard, no audit entry."""
    return (run_id, LEASE.shard, workflow_id, 1, "alice", "api", {}, *[None] * 5, "alice") + (
        None,
    ) * 4


def step_done(step_id: str, output: Any = None) -> Transition:
    t = Transition()
    t.step(StepChange(step_id, "succeeded", 1, output=output), "step.succeeded", output=output)
    return t


async def events(pool: asyncpg.Pool[Any], run_id: uuid.UUID) -> list[tuple[int, str, str]]:
    rows = await pool.fetch(
        "SELECT seq, event, coalesce(step_id, '') AS step_id FROM run_events"
        " WHERE run_id = $1 ORDER BY seq",
        run_id,
    )
    return [(r["seq"], r["event"], r["step_id"]) for r in rows]


async def test_changes_of_many_runs_share_one_transaction(pool: asyncpg.Pool[Any]) -> None:
    runs = [await new_run(pool) for _ in range(20)]
    writer = RunWriter(pool)
    results = await asyncio.gather(
        *(writer.submit(run_id, LEASE, step_done("a", {"n": i})) for i, run_id in enumerate(runs))
    )
    assert results == [1] * 20  # each run's first new event follows its run.created
    assert writer.changes == 20 and writer.batches < 20
    for i, run_id in enumerate(runs):
        assert await events(pool, run_id) == [(1, "run.created", ""), (2, "step.succeeded", "a")]
        output = await pool.fetchval(
            "SELECT output FROM step_attempts WHERE run_id = $1 AND step_id = 'a'", run_id
        )
        assert output == {"n": i}
    await writer.close()


async def test_a_change_given_after_seq_commits_right_after_its_predecessor(
    pool: asyncpg.Pool[Any],
) -> None:
    run_id = await new_run(pool)
    writer = RunWriter(pool)
    for round_ in range(10):
        seq = await pool.fetchval("SELECT last_seq FROM runs WHERE id = $1", run_id)
        first = writer.submit(run_id, LEASE, step_done(f"a{round_}"))
        await asyncio.sleep(0)  # the first is on its way
        second = writer.submit(run_id, LEASE, step_done(f"b{round_}"), after_seq=seq + 1)
        assert await first == seq
        assert await second == seq + 1  # sent once the first had committed: it fits
    steps = [step for _, _, step in (await events(pool, run_id))[1:]]
    assert steps == [s for r in range(10) for s in (f"a{r}", f"b{r}")]
    await writer.close()


async def test_a_change_that_does_not_find_its_predecessor_writes_nothing(
    pool: asyncpg.Pool[Any],
) -> None:
    run_id = await new_run(pool)
    writer = RunWriter(pool)
    # Its predecessor never committed: the run is still at seq 1, not 5.
    assert await writer.submit(run_id, LEASE, step_done("late"), after_seq=5) is None
    assert await events(pool, run_id) == [(1, "run.created", "")]
    assert await pool.fetchval("SELECT count(*) FROM run_steps WHERE run_id = $1", run_id) == 0
    assert await pool.fetchval("SELECT last_seq FROM runs WHERE id = $1", run_id) == 1
    await writer.close()


async def test_fenced_and_broken_changes_fail_alone(pool: asyncpg.Pool[Any]) -> None:
    good, fenced, broken = [await new_run(pool) for _ in range(3)]
    writer = RunWriter(pool)
    stale = Lease(LEASE.shard, LEASE.node_id, LEASE.token - 1)
    outcomes = await asyncio.gather(
        writer.submit(good, LEASE, step_done("a", {"ok": True})),
        writer.submit(fenced, stale, step_done("a")),
        # PostgreSQL refuses a NUL character in JSON text.
        writer.submit(broken, LEASE, step_done("a", {"bad": "\u0000"})),
        return_exceptions=True,
    )
    assert outcomes[0] == 1
    assert isinstance(outcomes[1], LeaseLost)
    assert isinstance(outcomes[2], asyncpg.PostgresError)
    assert [e for _, e, _ in await events(pool, good)] == ["run.created", "step.succeeded"]
    for run_id in (fenced, broken):
        assert await events(pool, run_id) == [(1, "run.created", "")]
    await writer.close()


async def test_many_runs_sending_ahead_all_finish_in_order(pool: asyncpg.Pool[Any]) -> None:
    """Changes given before their predecessors commit, held behind them while batches are
    busy: none is ever left behind, and each fits where its predecessor left the run."""
    runs = [await new_run(pool) for _ in range(24)]
    writer = RunWriter(pool)

    async def drive(run_id: uuid.UUID) -> None:
        seq, pending = 1, writer.submit(run_id, LEASE, step_done("s0"))
        for k in range(1, 12):
            await asyncio.sleep(0)
            ahead = writer.submit(run_id, LEASE, step_done(f"s{k}"), after_seq=seq + 1)
            assert await pending == seq
            seq += 1
            pending = ahead
        assert await pending == seq

    async with asyncio.timeout(60):
        await asyncio.gather(*(drive(run_id) for run_id in runs))
    for run_id in runs:
        steps = [step for _, _, step in (await events(pool, run_id))[1:]]
        assert steps == [f"s{k}" for k in range(12)]
    await writer.close()


async def test_rounds_of_an_idle_run_commit_one_by_one_in_one_call(
    pool: asyncpg.Pool[Any],
) -> None:
    run_id = await new_run(pool)
    writer = RunWriter(pool)
    rounds = [step_done(f"s{k}") for k in range(5)]
    futures = writer.submit_rounds(run_id, LEASE, rounds, [None, 2, 3, 4, 5])
    assert [await f for f in futures] == [1, 2, 3, 4, 5]
    assert writer.batches == 1  # one call
    # Each round is its own transaction: its events carry their own transaction id.
    xids = await pool.fetch(
        "SELECT DISTINCT xmin::text FROM run_events WHERE run_id = $1 AND seq > 1", run_id
    )
    assert len(xids) == 5
    steps = [step for _, _, step in (await events(pool, run_id))[1:]]
    assert steps == [f"s{k}" for k in range(5)]

    # A round that does not find the run where it expects writes nothing, nor do those after.
    futures = writer.submit_rounds(run_id, LEASE, [step_done("t0"), step_done("t1")], [None, 99])
    assert [await f for f in futures] == [6, None]
    assert [step for _, _, step in await events(pool, run_id)][-1] == "t0"

    # Fenced off: nothing is written and every round says so.
    stale = Lease(LEASE.shard, LEASE.node_id, LEASE.token + 1)
    futures = writer.submit_rounds(run_id, stale, [step_done("u0"), step_done("u1")], [None, 7])
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(o, LeaseLost) for o in outcomes)
    assert await pool.fetchval("SELECT last_seq FROM runs_now WHERE id = $1", run_id) == 7
    await writer.close()


async def test_event_seqs_come_from_the_events_not_the_run_row(pool: asyncpg.Pool[Any]) -> None:
    # A rounds call updates its run's row only where the run changes, and in its last round,
    # which leaves runs.last_seq exact.
    run_id = await new_run(pool)
    writer = RunWriter(pool)
    futures = writer.submit_rounds(
        run_id, LEASE, [step_done(f"s{k}") for k in range(4)], [None, 2, 3, 4]
    )
    assert [await f for f in futures] == [1, 2, 3, 4]
    assert await pool.fetchval("SELECT last_seq FROM runs WHERE id = $1", run_id) == 5

    # A call cut short (here: its second round does not apply) leaves the column where the
    # row was last updated, before its first round; the next change, through the batches,
    # still numbers its events after the last one, and readers see the latest event's seq.
    futures = writer.submit_rounds(run_id, LEASE, [step_done("t0"), step_done("t1")], [None, 99])
    assert [await f for f in futures] == [5, None]
    assert await pool.fetchval("SELECT last_seq FROM runs WHERE id = $1", run_id) == 5
    run = await pool.fetchrow(queries["get_run"], run_id, None)
    assert run is not None and run["last_seq"] == 6
    assert await writer.submit(run_id, LEASE, step_done("u0"), after_seq=6) == 6
    assert [seq for seq, _, _ in await events(pool, run_id)] == list(range(1, 8))
    snapshot = await pool.fetchrow(queries["run_snapshot"], run_id)
    assert snapshot is not None and snapshot["last_seq"] == 7
    await writer.close()


def rounds_of_a_run(command_id: int | None = None) -> list[Transition]:
    """Two rounds touching every kind of row: a command (when given), new and existing steps,
    attempts and the run's status."""
    first = Transition(commands=[] if command_id is None else [command_id], outcome="applied")
    first.run("running", "run.started")
    first.step(StepChange("a", "succeeded", 1, output={"n": 1}), "step.succeeded", output={"n": 1})
    first.step(StepChange("b", "running", 1), "step.started")
    second = Transition()
    error = {"message": "boom", "retryable": False}
    second.step(StepChange("b", "failed", 1, error=error), "step.failed", error=error)
    second.step(StepChange("c", "skipped", 0), "step.skipped")
    second.run("failed", "run.failed", {"step_id": "b", "message": "boom"})
    return [first, second]


async def written(pool: asyncpg.Pool[Any], run_id: uuid.UUID) -> dict[str, Any]:
    """Everything a run's changes wrote, without ids and times (which differ between runs)."""
    run = await pool.fetchrow(
        "SELECT status, error, output, last_seq, started_at IS NOT NULL AS started,"
        " completed_at IS NOT NULL AS completed FROM runs WHERE id = $1",
        run_id,
    )
    steps = await pool.fetch(
        "SELECT step_id, status, attempt, output, error, started_at IS NOT NULL AS started,"
        " completed_at IS NOT NULL AS completed FROM run_steps WHERE run_id = $1 ORDER BY 1",
        run_id,
    )
    attempts = await pool.fetch(
        "SELECT step_id, attempt, status, output, error FROM step_attempts"
        " WHERE run_id = $1 ORDER BY 1, 2",
        run_id,
    )
    rows = await pool.fetch(
        "SELECT seq, event, step_id, data FROM run_events WHERE run_id = $1 ORDER BY seq", run_id
    )
    commands = await pool.fetch(
        "SELECT outcome, processed_at IS NOT NULL AS processed FROM run_commands WHERE run_id = $1",
        run_id,
    )
    return {
        "run": dict(run) if run else None,
        "steps": [dict(r) for r in steps],
        "attempts": [dict(r) for r in attempts],
        "events": [dict(r) for r in rows],
        "commands": [dict(r) for r in commands],
    }


async def test_rounds_in_one_call_write_what_batches_write(pool: asyncpg.Pool[Any]) -> None:
    # The procedure that commits a run's rounds has its own statements; a run's rows must not
    # depend on which path its changes took.
    alone, together = await new_run(pool), await new_run(pool)
    writer = RunWriter(pool)
    for run_id in (alone, together):
        command = await pool.fetchval(queries["insert_command"], run_id, "resume", {}, "alice")
        first, second = rounds_of_a_run(command)
        if run_id == alone:
            assert await writer.submit(run_id, LEASE, first) == 1
            assert await writer.submit(run_id, LEASE, second) == 4
        else:
            futures = writer.submit_rounds(run_id, LEASE, [first, second], [None, 4])
            assert [await f for f in futures] == [1, 4]
    expected = await written(pool, alone)
    assert expected["run"] == {
        "status": "failed",
        "error": {"step_id": "b", "message": "boom"},
        "output": None,
        "last_seq": 7,
        "started": True,
        "completed": True,
    }
    assert [s["status"] for s in expected["steps"]] == ["succeeded", "failed", "skipped"]
    assert expected["commands"] == [{"outcome": "applied", "processed": True}]
    assert await written(pool, together) == expected
    # The call whose last round ended the run returned it, as get_run_detail reads it; a run
    # that ended through batches has nothing kept.
    detail = await pool.fetchrow(queries["get_run_detail"], together, None)
    assert detail is not None and writer.ended(together) == dict(detail)
    assert writer.take_ended(together) == dict(detail)
    assert writer.ended(together) is None and writer.take_ended(alone) is None
    await writer.close()


async def test_a_start_sent_with_its_first_rounds_writes_what_an_insert_and_rounds_write(
    pool: asyncpg.Pool[Any],
) -> None:
    workflow_id = await new_workflow(pool)
    alone, together = uuid.uuid4(), uuid.uuid4()
    writer = RunWriter(pool)
    await pool.fetchrow(queries["insert_run"], *insert_args(workflow_id, alone))
    futures = writer.submit_rounds(alone, LEASE, rounds_of_a_run(), [None, 4])
    assert [await f for f in futures] == [1, 4]
    created: asyncio.Future[asyncpg.Record | None] = asyncio.get_running_loop().create_future()
    args = insert_args(workflow_id, together)
    futures = writer.submit_start(together, LEASE, args, rounds_of_a_run(), [None, 4], created)
    assert [await f for f in futures] == [1, 4]
    row = await created
    assert row is not None and row["id"] == together and row["status"] == "pending"
    assert await written(pool, together) == await written(pool, alone)
    assert (await written(pool, together))["run"]["status"] == "failed"
    # The run's creation commits with its first round; its second round commits alone.
    xids = await pool.fetch(
        "SELECT seq, xmin::text AS xid FROM run_events WHERE run_id = $1 ORDER BY seq", together
    )
    by_seq = {r["seq"]: r["xid"] for r in xids}
    assert by_seq[1] == by_seq[2] == by_seq[4] != by_seq[5]
    await writer.close()


async def test_a_start_refused_or_fenced_off_in_its_rounds_call(pool: asyncpg.Pool[Any]) -> None:
    writer = RunWriter(pool)
    loop = asyncio.get_running_loop()
    # The workflow is no longer published: no run, no round tried, the rounds' futures dropped.
    archived = await new_workflow(pool, status="archived")
    run_id = uuid.uuid4()
    created: asyncio.Future[asyncpg.Record | None] = loop.create_future()
    futures = writer.submit_start(
        run_id, LEASE, insert_args(archived, run_id), rounds_of_a_run(), [None, 4], created
    )
    assert await created is None
    await asyncio.sleep(0)
    assert all(f.cancelled() for f in futures)
    assert await pool.fetchval("SELECT count(*) FROM runs WHERE id = $1", run_id) == 0
    assert await pool.fetchval("SELECT count(*) FROM run_events WHERE run_id = $1", run_id) == 0

    # The lease is gone: the run is created, pending, for the shard's next owner; no round is.
    stale = Lease(LEASE.shard, LEASE.node_id, LEASE.token + 1)
    run_id = uuid.uuid4()
    created = loop.create_future()
    args = insert_args(await new_workflow(pool), run_id)
    futures = writer.submit_start(run_id, stale, args, rounds_of_a_run(), [None, 4], created)
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(o, LeaseLost) for o in outcomes)
    row = await created
    assert row is not None and row["status"] == "pending"
    assert await events(pool, run_id) == [(1, "run.created", "")]
    await writer.close()


async def test_more_starts_at_once_than_the_pool_has_connections(
    pool: asyncpg.Pool[Any],
) -> None:
    # Each start goes in a call of its own, however busy the writer is; the connections
    # those calls borrow go back to the pool, so starts waiting for one are not left behind.
    workflow_id = await new_workflow(pool)
    writer = RunWriter(pool)
    loop = asyncio.get_running_loop()
    runs = [uuid.uuid4() for _ in range(3 * pool.get_max_size())]
    created: list[asyncio.Future[asyncpg.Record | None]] = []
    commits = []
    for run_id in runs:
        created.append(loop.create_future())
        args = insert_args(workflow_id, run_id)
        commits += writer.submit_start(
            run_id, LEASE, args, [step_done("a"), step_done("b")], [None, 2], created[-1]
        )
    async with asyncio.timeout(30):
        rows = await asyncio.gather(*created)
        bases = await asyncio.gather(*commits)
    assert all(row is not None for row in rows)
    assert bases == [1, 2] * len(runs)
    # It keeps no more connections than it has batches in flight.
    assert pool.get_size() - pool.get_idle_size() <= writer.max_in_flight
    await writer.close()
