"""Training on Vertex AI: one CustomJob per Stepwell job, labelled with the job id so a
recovered actor re-attaches to it instead of submitting a second one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from actors.training_job import JobOutcome, JobReporter
from runtime.compute.vertex import VertexBackend, VertexJob, VertexSpec

TRAINER = ("python", "-m", "runtime.compute.trainer")


class VertexTrainingBackend:
    """Submits, watches and cancels CustomJobs; state changes become log lines."""

    # How often `watch` polls Vertex: from `poll_s`, backing off to `max_poll_s` while the
    # state stays the same.
    poll_s = 1.0
    max_poll_s = 30.0

    def __init__(self, vertex: VertexBackend, output_root: str, image_uri: str | None = None):
        self.vertex = vertex
        self.output_root = output_root.rstrip("/")
        self.image_uri = image_uri

    async def close(self) -> None:
        await self.vertex.close()

    def spec(self, job: Mapping[str, Any]) -> VertexSpec:
        config = job["config"]
        out = f"{self.output_root}/training-jobs/{job['id']}"
        spec = VertexSpec(
            job_id=str(job["id"]),
            display_name=f"stepwell-{job['id']}",
            command=TRAINER,
            args=(f"{out}/spec.json",),
            machine_type=config.get("machine_type") or "n1-standard-4",
            accelerator_type=config.get("accelerator_type") or None,
            accelerator_count=int(config.get("accelerator_count") or 0),
            max_runtime_seconds=config.get("max_runtime_seconds"),
            base_output_directory=out,
        )
        return replace(spec, image_uri=self.image_uri) if self.image_uri else spec

    async def train(self, job: Mapping[str, Any], report: JobReporter) -> JobOutcome:
        try:
            spec = self.spec(job)
        except ValueError as exc:
            return JobOutcome("failed", error=str(exc))
        submitted = await self.vertex.submit(spec)  # re-attaches when the label exists
        await report.log(f"Vertex AI job {submitted.name} ({submitted.raw_state})")

        async def changed(state: VertexJob) -> None:
            await report.status(state.status.value, state.raw_state)
            await report.log(state.log_line(), "error" if state.error else "info")

        final = await self.vertex.watch(
            submitted.name,
            changed,
            last_state=job.get("raw_state"),
            poll_s=self.poll_s,
            max_poll_s=self.max_poll_s,
        )
        if final.status.value != "succeeded":
            return JobOutcome(final.status.value, error=final.error, raw_state=final.raw_state)
        return JobOutcome(
            "succeeded",
            artifact_uri=f"{spec.base_output_directory}/model/model.joblib",
            metadata={"vertex_job": final.name},
            raw_state=final.raw_state,
        )

    async def cancel(self, job: Mapping[str, Any]) -> None:
        found = await self.vertex.find(str(job["id"]))
        if found is not None:
            await self.vertex.cancel(found.name)
