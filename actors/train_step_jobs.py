"""The training jobs of train steps, as the run dispatcher serves them: a step attempt's job
created once, checked after a crash, cancelled with its run, and its end told to the run as a
durable command; and a crashed job actor's job failed visibly."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import asyncpg

from actors.steps.context import StepFailed
from actors.training import TERMINAL as TRAINING_TERMINAL
from actors.training import create_training_job
from runtime.bus import EventBus
from runtime.errors import ApiError
from runtime.shards import ShardManager, shard_of
from runtime.sql import queries

log = logging.getLogger(__name__)


class TrainStepJobs:
    """Part of the run dispatcher (its base class): what it takes from the dispatcher is
    declared here."""

    pool: asyncpg.Pool[Any]
    bus: EventBus
    shards: ShardManager
    compute: str

    async def wake(self, run_id: UUID, created: Mapping[str, Any] | None = None) -> None:
        raise NotImplementedError

    async def wake_job(self, job_id: UUID) -> None:
        raise NotImplementedError

    async def start_training(
        self, run: Mapping[str, Any], step_id: str, attempt: int, request: Mapping[str, Any]
    ) -> UUID:
        """The training job of one train step attempt, created once."""
        key = f"{step_id}#{attempt}"
        async with self.pool.acquire() as conn, conn.transaction():
            job = await conn.fetchrow(queries["get_step_training_job"], run["id"], key)
            if job is None:
                try:
                    job = await create_training_job(
                        conn,
                        None,
                        request,
                        owner=run["owner_id"],
                        created_by=run["owner_id"],
                        backend=self.compute,
                        run=(run["id"], key),
                    )
                except ApiError as exc:
                    raise StepFailed(
                        f"cannot start training: {exc.message}",
                        retryable=False,
                        details=exc.details,
                    ) from exc
        await self.wake_job(job["id"])
        return UUID(str(job["id"]))

    async def check_training(self, run: Mapping[str, Any], step_id: str, attempt: int) -> None:
        """A job that ended while its run was not listening still reports (after a crash)."""
        job = await self.pool.fetchrow(
            queries["get_step_training_job"], run["id"], f"{step_id}#{attempt}"
        )
        if job is not None and job["status"] in TRAINING_TERMINAL:
            await self.training_finished(dict(job))

    async def cancel_training(self, run_id: UUID, step_id: str, attempt: int) -> None:
        """Cancelling a run cancels the training job its step was waiting for."""
        job = await self.pool.fetchrow(
            queries["get_step_training_job"], run_id, f"{step_id}#{attempt}"
        )
        if job is None or job["status"] in TRAINING_TERMINAL:
            return
        await self.pool.execute(queries["request_training_cancel"], job["id"], None)
        await self.wake_job(job["id"])

    async def training_finished(self, job: Mapping[str, Any]) -> None:
        """Tell the run whose step started a training job how it ended (a durable command)."""
        step_id, _, attempt = str(job["step_id"]).rpartition("#")
        result = {
            "training_job_id": str(job["id"]),
            "status": job["status"],
            "model_version_id": _text(job.get("model_version_id")),
            "metrics": job.get("metrics") or {},
        }
        payload = {
            "step_id": step_id,
            "attempt": int(attempt),
            "status": job["status"],
            "result": result,
            "error": job.get("error"),
        }
        await self.pool.execute(queries["insert_child_done"], job["run_id"], payload)
        await self.wake(job["run_id"])

    async def job_crashed(self, job_id: UUID, exc: BaseException) -> None:
        """A crashed job actor fails its job visibly instead of leaving it running."""
        lease = self.shards.lease_for(shard_of(job_id))
        log.error("training job actor crashed", exc_info=exc, extra={"job_id": str(job_id)})
        if lease is None:
            return
        message = f"internal error: {type(exc).__name__}: {exc}"
        await self.pool.execute(queries["append_training_log"], job_id, "error", message)
        row = await self.pool.fetchrow(
            queries["set_training_status"],
            job_id,
            "failed",
            None,
            message,
            lease.shard,
            lease.node_id,
            lease.token,
        )
        self.bus.published(job_id)
        if row is not None and row["run_id"] is not None:
            await self.training_finished(dict(row))


def _text(value: object) -> str | None:
    return None if value is None else str(value)
