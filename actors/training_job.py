"""TrainingJobActor: owns one training job, like a RunActor owns a run.

It moves the job through its statuses (each change fenced by the shard lease), runs the work on
the configured backend as a task so cancel requests still reach it, writes log lines and
metrics as they come, and on success registers a model version with the job's metrics and
lineage in the same transaction that marks the job succeeded. After a restart, an unfinished
local job trains again from the start; a Vertex job is re-attached through its label.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

import asyncpg

from actors.base import Actor, ActorStopped, MailboxFull
from actors.run_store import LeaseLost
from actors.training import TERMINAL
from runtime.audit import AuditContext, record_audit
from runtime.auth import Principal
from runtime.bus import EventBus
from runtime.shards import Lease
from runtime.sql import queries
from runtime.storage.base import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobPoke:
    """The job has news in the database (created, or a cancel was requested)."""


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How the work ended, and what it produced."""

    status: str  # succeeded, failed, cancelled or timed_out
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    artifact_uri: str | None = None
    raw_state: str | None = None


@dataclass(frozen=True, slots=True)
class WorkDone:
    outcome: JobOutcome


class JobReporter(Protocol):
    """What a backend may tell the job while it works."""

    async def log(self, message: str, level: str = "info") -> None: ...

    async def metric(self, step: int, name: str, value: float) -> None: ...

    async def status(self, status: str, raw_state: str | None = None) -> None: ...

    async def external_id(self, name: str) -> None:
        """The provider's name for the work (a Vertex AI CustomJob), once known."""
        ...


class JobBackend(Protocol):
    """Where training happens: local subprocesses or Vertex AI."""

    async def train(self, job: Mapping[str, Any], report: JobReporter) -> JobOutcome: ...

    async def cancel(self, job: Mapping[str, Any]) -> None: ...


class JobServices(Protocol):
    pool: asyncpg.Pool[Any]
    bus: EventBus
    storage: Storage | None
    training: JobBackend | None

    def lease_for(self, shard: int) -> Lease | None: ...

    async def training_finished(self, job: Mapping[str, Any]) -> None: ...

    def job_ended(self, status: str) -> None: ...


class TrainingJobActor(Actor):
    """The only writer of one training job while this process holds its shard."""

    def __init__(self, job_id: UUID, services: JobServices) -> None:
        super().__init__(f"job:{job_id}", mailbox_size=64)
        self.job_id = job_id
        self.services = services
        self.job: dict[str, Any] = {}
        self.lease: Lease | None = None
        self.work: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        row = await self.services.pool.fetchrow(queries["training_job_inputs"], self.job_id)
        if row is None or row["status"] in TERMINAL:
            self.stop()
            return
        self.job = dict(row)
        self.lease = self.services.lease_for(row["shard"])
        if self.lease is None:
            raise LeaseLost(f"shard {row['shard']} is not ours")
        if row["cancel_requested"]:
            await self._set_status("cancelled", error="cancelled before it started")
            await self._done()
            return
        backend = self.services.training
        if backend is None:
            await self._set_status("failed", error="no training backend is configured")
            await self._done()
            return
        if row["status"] != "queued":
            await self.log(f"resuming after a restart (was {row['status']})", "warning")
        self.work = asyncio.create_task(self._train(backend))

    async def on_stop(self) -> None:
        if self.work is not None and not self.work.done():
            self.work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.work

    def is_idle(self) -> bool:
        return self.work is None or self.work.done()

    async def receive(self, message: object) -> Any:
        if isinstance(message, JobPoke):
            await self._check_cancel()
        elif isinstance(message, WorkDone):
            await self._finish(message.outcome)
        return None

    # -- reporting (called from the work task) --------------------------------------------

    async def log(self, message: str, level: str = "info") -> None:
        await self.services.pool.execute(
            queries["append_training_log"], self.job_id, level, message
        )
        self.services.bus.published(self.job_id)

    async def metric(self, step: int, name: str, value: float) -> None:
        await self.services.pool.execute(
            queries["insert_training_metric"], self.job_id, step, name, value
        )

    async def external_id(self, name: str) -> None:
        if name != self.job.get("external_id"):
            await self.services.pool.execute(queries["set_training_external_id"], self.job_id, name)
            self.job["external_id"] = name

    async def status(self, status: str, raw_state: str | None = None) -> None:
        if status in TERMINAL:
            # Only `_finish` ends the job, together with its outcome (the model version, the
            # error): ended here, a reader would see `succeeded` with no model, and a crash
            # before `_finish` would leave it so, as recovery skips ended jobs.
            status = self.job["status"]
        if status != self.job["status"] or raw_state != self.job.get("raw_state"):
            await self._set_status(status, raw_state=raw_state)

    # -- work --------------------------------------------------------------------------------

    async def _train(self, backend: JobBackend) -> None:
        try:
            outcome = await backend.train(self.job, self)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the backend's failure is the job's failure, not a crash
            log.exception("training failed", extra={"job_id": str(self.job_id)})
            outcome = JobOutcome("failed", error=f"{type(exc).__name__}: {exc}")
        while True:
            try:
                self.tell(WorkDone(outcome))
                return
            except MailboxFull:
                await asyncio.sleep(0.05)
            except ActorStopped:
                return  # stopping: whoever owns the job next trains or re-attaches again

    async def _check_cancel(self) -> None:
        row = await self.services.pool.fetchrow(queries["get_training_job"], self.job_id, None)
        if row is None or not row["cancel_requested"] or row["status"] in TERMINAL:
            return
        self.job["cancel_requested"] = True
        await self.log("cancel requested", "warning")
        if self.services.training is not None:
            await self.services.training.cancel(self.job)

    async def _finish(self, outcome: JobOutcome) -> None:
        if outcome.status == "succeeded":
            await self._register(outcome)
        else:
            status = "cancelled" if self.job.get("cancel_requested") else outcome.status
            await self.log(
                f"job {status}" + (f": {outcome.error}" if outcome.error else ""),
                "info" if status == "cancelled" else "error",
            )
            await self._set_status(status, error=outcome.error, raw_state=outcome.raw_state)
        await self._done()

    async def _register(self, outcome: JobOutcome) -> None:
        """Record the model version and the job's success together."""
        assert self.lease is not None  # noqa: S101
        job = self.job
        async with self.services.pool.acquire() as conn, conn.transaction():
            await conn.execute(queries["lock_trained_model"], str(job["model_id"]))
            version = await conn.fetchrow(
                queries["register_trained_version"],
                job["model_id"],
                outcome.artifact_uri,
                job["framework"] if job["backend"] == "vertex" else "scikit-learn",
                outcome.metrics,
                outcome.parameters,
                outcome.metadata,
                job["dataset_version_id"],
                self.job_id,
                job["created_by"],
            )
            assert version is not None  # noqa: S101
            done = await conn.fetchrow(
                queries["finish_training_job"],
                self.job_id,
                outcome.metrics,
                version["id"],
                self.lease.shard,
                self.lease.node_id,
                self.lease.token,
            )
            if done is None:
                raise LeaseLost("lease lost before the job could be recorded")
            who = AuditContext(Principal(user_id=job["created_by"]), None)
            await record_audit(
                conn,
                who,
                action="version.create",
                entity_type="model",
                entity_id=str(job["model_id"]),
                owner_id=job["owner_id"],
                changes={"version": version["version"], "training_job_id": str(self.job_id)},
            )
        self.job.update(dict(done))
        await self.log(f"registered model version {version['version']}")

    async def _set_status(
        self, status: str, *, error: str | None = None, raw_state: str | None = None
    ) -> None:
        assert self.lease is not None  # noqa: S101
        row = await self.services.pool.fetchrow(
            queries["set_training_status"],
            self.job_id,
            status,
            raw_state,
            error,
            self.lease.shard,
            self.lease.node_id,
            self.lease.token,
        )
        if row is None:
            raise LeaseLost("training job lease lost")
        self.job.update({k: row[k] for k in ("status", "raw_state", "error")})
        self.services.bus.published(self.job_id)

    async def _done(self) -> None:
        self.services.job_ended(str(self.job.get("status")))
        self.services.bus.published(self.job_id)
        if self.job.get("run_id") is not None:
            await self.services.training_finished(self.job)
        self.stop()
