"""Delivers runs to their actors: on this node when it owns the shard, else through the bus.

Also reacts to shard changes (recover every active run of a gained shard, stop the actors of
a lost one), sweeps for commands whose wake-up was lost, and makes a crashed actor's run fail
visibly instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
from aiohttp import web

from actors.base import MailboxFull
from actors.batch_predictions import BatchJobs
from actors.cron import CronActor
from actors.deployments import VertexDeployer, vertex_deployer_of
from actors.ml_operations import OPERATIONS
from actors.model_cache import ModelCache
from actors.registry import ActorRegistry
from actors.run import RunActor
from actors.run_insert import PendingInsert, StartNotSent
from actors.run_messages import Poke
from actors.run_store import LeaseLost, Transition, persist
from actors.run_writer import RunWriter
from actors.runs import PreparedRun, insert_args, insert_run, refusal, start_run
from actors.steps.context import StepFailed
from actors.train_step_jobs import TrainStepJobs
from actors.training_job import JobBackend, JobPoke, TrainingJobActor
from actors.training_local import LocalTrainingBackend
from actors.training_vertex import VertexTrainingBackend
from runtime.bus import EventBus
from runtime.config import Config, ConfigError
from runtime.db import Queryable
from runtime.errors import ApiError
from runtime.keys import CLOCK, CONFIG, DB_POOL, DISPATCHER, METRICS, STORAGE
from runtime.metrics import Metrics
from runtime.shards import Lease, ShardManager, shard_of
from runtime.sql import queries
from runtime.storage.base import Storage

log = logging.getLogger(__name__)
# An image with Stepwell installed (its trainer runs inside); Vertex's prebuilt ones lack it.
TRAINER_IMAGE_ENV = "STEPWELL_VERTEX_TRAINER_IMAGE"
StepOperation = Callable[["RunDispatcher", Mapping[str, Any], Mapping[str, Any]], Awaitable[Any]]
SWEEP_INTERVAL_S = 2.0
REAP_INTERVAL_S = 30.0
MAX_IDLE_S = 300.0


@dataclass(frozen=True, slots=True)
class BegunRun:
    """A run written and handed to its owner: its row as inserted, and the actor carrying it
    in this process (None: another process owns its shard)."""

    row: asyncpg.Record
    actor: RunActor | None


class RunDispatcher(TrainStepJobs):
    """This process's door to run actors, and the services they use."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        bus: EventBus,
        http: aiohttp.ClientSession,
        node_id: str,
        lease_ttl_s: float = 15.0,
        compute: str = "local",
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.http = http
        self.writer = RunWriter(pool)
        self.registry = ActorRegistry(on_crash=self._on_crash)
        self.shards = ShardManager(
            pool, node_id, ttl_s=lease_ttl_s, on_acquire=self._acquired, on_release=self._released
        )
        bus.on_command = self._on_bus_command
        self._sweeper: asyncio.Task[None] | None = None
        self.cron: CronActor | None = None
        self.storage: Storage | None = None
        self.training: JobBackend | None = None
        self.model_cache: ModelCache | None = None
        self.metrics: Metrics | None = None
        self.batch_jobs: BatchJobs | None = None
        self.vertex_deployer: VertexDeployer | None = None
        self.compute = compute
        # ML step operations by name (deploy, predict, ...), registered by the modules that
        # own them so this module does not depend on each of them.
        self.operations: dict[str, StepOperation] = {}

    async def start(self) -> None:
        await self.shards.start()
        self.registry.start_reaper(REAP_INTERVAL_S, MAX_IDLE_S)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="runs:sweep")

    async def close(self) -> None:
        if self.cron is not None:
            await self.cron.stop_and_wait()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.shards.close()
        await self.registry.close()
        await self.writer.close()

    # -- delivery ----------------------------------------------------------------------------

    def lease_for(self, shard: int) -> Lease | None:
        return self.shards.lease_for(shard)

    async def wake(self, run_id: UUID, created: Mapping[str, Any] | None = None) -> None:
        """The run has news in the database; make sure its owner looks.

        `created` is the row (with definition) of a run this request just created: a new actor
        starts from it instead of reading it back.
        """
        shard = shard_of(run_id)
        if self.shards.lease_for(shard) is None:
            await self.bus.command_written(run_id)
            return
        existing = self.registry.get(str(run_id))
        if existing is not None:
            with contextlib.suppress(MailboxFull):
                existing.tell(Poke())
            return
        # A new actor reads the run and its pending commands as it starts.
        self.registry.get_or_spawn(str(run_id), lambda: RunActor(run_id, self, created))

    async def begin_run(
        self, conn: Queryable, prepared: PreparedRun, *, waited_for: bool = False
    ) -> BegunRun:
        """Write a prepared run, then have its owner carry it on.

        When this process holds the run's shard, the run's actor starts at once and plans
        its first rounds while the insert is on its way; it writes nothing before the insert
        has committed, and stops without a trace if the insert fails (the error is the
        caller's to answer). A run whose caller waits for its end (`waited_for`) is inserted
        by its actor instead, with its first rounds in one call, when the writer is idle:
        answering the start then waits for those rounds, but the end comes sooner.
        """
        run_id = prepared.run_id
        if self.shards.lease_for(shard_of(run_id)) is None:
            return await self._insert_and_wake(conn, prepared)
        args = insert_args(prepared)
        by_actor = waited_for and self.writer.idle()
        if by_actor:  # the actor sends the insert with its first rounds
            pending = PendingInsert(asyncio.get_running_loop().create_future(), args)
        else:
            pending = PendingInsert(
                asyncio.ensure_future(conn.fetchrow(queries["insert_run"], *args))
            )
        actor = RunActor(run_id, self, prepared.provisional_row(), pending)
        self.registry.get_or_spawn(str(run_id), lambda: actor)
        if by_actor:  # however the actor ends, an insert it did not send comes back here
            actor.start().add_done_callback(lambda _: pending.not_sent())
        try:
            # Shielded when the actor sends it: the insert goes on whatever this caller does.
            row = await (asyncio.shield(pending.inserted) if by_actor else pending.inserted)
        except StartNotSent:
            return await self._insert_and_wake(conn, prepared)
        if row is None:
            raise await refusal(conn, prepared)
        return BegunRun(row, actor)

    async def _insert_and_wake(self, conn: Queryable, prepared: PreparedRun) -> BegunRun:
        """Insert a prepared run alone, then wake its owner, here or elsewhere."""
        started = await insert_run(conn, prepared)
        await self.wake(prepared.run_id, started.actor_row())
        return BegunRun(started.row, self._run_actor(prepared.run_id))

    def _run_actor(self, run_id: UUID) -> RunActor | None:
        actor = self.registry.get(str(run_id))
        return actor if isinstance(actor, RunActor) else None

    async def _on_bus_command(self, kind: str, key: UUID) -> None:
        if self.shards.lease_for(shard_of(key)) is None:
            return
        if kind == "job":
            await self.wake_job(key)
        else:
            await self.wake(key)

    async def wake_job(self, job_id: UUID) -> None:
        """A training job has news (created, cancel requested): make sure its owner looks."""
        if self.shards.lease_for(shard_of(job_id)) is None:
            await self.bus.command_written(job_id, "job")
            return
        key = f"job:{job_id}"
        existing = self.registry.get(key)
        if existing is not None:
            with contextlib.suppress(MailboxFull):
                existing.tell(JobPoke())
            return
        self.registry.get_or_spawn(key, lambda: TrainingJobActor(job_id, self))

    async def _acquired(self, leases: Mapping[int, Lease]) -> None:
        rows = await self.pool.fetch(queries["list_active_runs"], list(leases))
        jobs = await self.pool.fetch(queries["list_active_training_jobs"], list(leases))
        log.info(
            "shards acquired",
            extra={"shards": len(leases), "active_runs": len(rows), "jobs": len(jobs)},
        )
        for job in jobs:
            await self.wake_job(job["id"])
        if self.cron is not None:
            self.cron.poke()
        for row in rows:
            await self.wake(row["id"])

    async def _released(self, leases: Mapping[int, Lease]) -> None:
        keys = [
            k
            for k in self.registry.keys()  # noqa: SIM118 - a method, not a dict
            if shard_of(UUID(k.removeprefix("job:"))) in leases
        ]
        await asyncio.gather(*(self.registry.stop(k) for k in keys))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                rows = await self.pool.fetch(
                    queries["list_runs_needing_attention"], list(self.shards.owned)
                )
                for row in rows:
                    await self.wake(row["id"])
            except (OSError, asyncpg.PostgresError):
                log.exception("run sweep failed")

    async def _on_crash(self, key: str, exc: BaseException) -> None:
        if isinstance(exc, LeaseLost):
            return  # another node owns the run now and carries on
        if key.startswith("job:"):
            await self.job_crashed(UUID(key.removeprefix("job:")), exc)
            return
        run_id = UUID(key)
        lease = self.shards.lease_for(shard_of(run_id))
        log.error("run actor crashed", exc_info=exc, extra={"run_id": key})
        if lease is None:
            return
        # Its pending commands are settled too, so a command that crashes the actor cannot
        # crash every actor the sweep spawns after it.
        pending = await self.pool.fetch(queries["list_pending_commands"], run_id)
        t = Transition(commands=[r["id"] for r in pending], outcome="not applied: run crashed")
        error = {"message": f"internal error: {type(exc).__name__}: {exc}", "code": "crashed"}
        t.run("failed", "run.failed", error)
        with contextlib.suppress(LeaseLost):
            await persist(self.pool, run_id, lease, t)
            self.bus.published(run_id)

    # -- services for run and job actors -----------------------------------------------------

    async def step_operation(
        self, run: Mapping[str, Any], operation: str, config: Mapping[str, Any]
    ) -> Any:
        """Registry operations of ML steps, on behalf of the run's owner."""
        handler = self.operations.get(operation)
        if handler is None:
            raise StepFailed(f"step operation {operation!r} is not available", retryable=False)
        try:
            return await handler(self, run, config)
        except ApiError as exc:
            raise StepFailed(
                f"{operation} failed: {exc.message}",
                retryable=exc.status >= 500,
                details=exc.details,
            ) from exc

    def run_ended(self, status: str) -> None:
        if self.metrics is not None:
            self.metrics.runs.labels(status).inc()

    def job_ended(self, status: str) -> None:
        if self.metrics is not None:
            self.metrics.jobs.labels(status).inc()

    def fire_started(self, lateness_ms: float) -> None:
        if self.metrics is not None:
            self.metrics.fire_lateness.observe(lateness_ms / 1000)

    async def start_child(
        self,
        parent: Mapping[str, Any],
        step_id: str,
        attempt: int,
        workflow_id: UUID,
        run_input: Mapping[str, Any],
    ) -> UUID:
        """The child run of one subworkflow step attempt, created once."""
        async with self.pool.acquire() as conn, conn.transaction():
            existing = await conn.fetchrow(queries["get_child_run"], parent["id"], step_id, attempt)
            if existing is not None:
                return UUID(str(existing["id"]))
            try:
                child = await start_run(
                    conn,
                    workflow_id,
                    owner=parent["owner_id"],
                    created_by=parent["owner_id"],
                    trigger_type="subworkflow",
                    run_input=dict(run_input),
                    parent=(parent["id"], step_id, attempt),
                    audit=None,
                )
            except ApiError as exc:
                raise StepFailed(
                    f"cannot start child run: {exc.message}", retryable=False, details=exc.details
                ) from exc
        await self.wake(child["id"])
        return UUID(str(child["id"]))

    async def child_finished(self, run: Mapping[str, Any]) -> None:
        """Tell a parent run that its child ended (as a durable command)."""
        payload = {
            "step_id": run["parent_step_id"],
            "attempt": run["parent_attempt"],
            "child_run_id": str(run["id"]),
            "status": run["status"],
            "output": run.get("output"),
            "error": run.get("error"),
        }
        await self.pool.execute(queries["insert_child_done"], run["parent_run_id"], payload)
        await self.wake(run["parent_run_id"])


def build_training(
    config: Config, storage: Storage
) -> LocalTrainingBackend | VertexTrainingBackend:
    """The training backend STEPWELL_COMPUTE names."""
    if config.compute == "vertex":
        from runtime.compute.vertex import VertexBackend

        if not (config.storage_url or "").startswith("gs://"):
            raise ConfigError("STEPWELL_COMPUTE=vertex needs STEPWELL_STORAGE=gs://bucket/prefix")
        assert config.storage_url is not None  # noqa: S101
        return VertexTrainingBackend(
            VertexBackend.from_env(os.environ), storage, os.environ.get(TRAINER_IMAGE_ENV) or None
        )
    return LocalTrainingBackend(storage, config.data_dir / "work")


async def runs_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the bus, the HTTP client steps use, shard leases and run actors."""
    config = app[CONFIG]
    assert config.database_url is not None  # noqa: S101
    bus = EventBus(config.database_url, config.node_id)
    await bus.start()
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
    dispatcher = RunDispatcher(
        app[DB_POOL],
        bus,
        http,
        config.node_id,
        lease_ttl_s=config.lease_ttl_s,
        compute=config.compute,
    )
    app[DISPATCHER] = dispatcher
    dispatcher.storage = app[STORAGE]
    dispatcher.metrics = app[METRICS]
    dispatcher.model_cache = ModelCache(app[STORAGE], work_dir=config.data_dir / "work")
    dispatcher.batch_jobs = BatchJobs(
        app[DB_POOL],
        app[STORAGE],
        dispatcher.model_cache,
        config.data_dir / "work",
        config.node_id,
        config.lease_ttl_s,
    )
    # Before anything here can start a job: this node id's jobs in the database are then
    # all left by the process that had it before.
    await dispatcher.batch_jobs.sweep(starting=True)
    dispatcher.batch_jobs.sweep_every()
    dispatcher.vertex_deployer = vertex_deployer_of(app)  # built by deployments_ctx
    dispatcher.operations.update(OPERATIONS)
    training = build_training(config, app[STORAGE])
    dispatcher.training = training
    await dispatcher.start()
    cron = CronActor(app[DB_POOL], dispatcher, app[CLOCK], config.node_id)
    dispatcher.cron = cron
    bus.on_schedules_changed = cron.poke
    cron.start()
    yield
    await dispatcher.close()
    await training.close()
    await http.close()
    await bus.close()
