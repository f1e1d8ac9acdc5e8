"""Training on Vertex AI: one CustomJob per Stepwell job, labelled with the job id so a
recovered actor re-attaches to it instead of submitting a second one.

The job runs Stepwell's own trainer (`python -m runtime.compute.trainer <spec>`) in an image
that contains Stepwell (`STEPWELL_VERTEX_TRAINER_IMAGE`). Vertex mounts the bucket at
`/gcs/<bucket>/`, so the spec, the dataset files and the model are plain paths there. The trainer
copies every message it would print to `report.jsonl` beside the model; the job's metrics,
parameters and artifact digest are read back from it when Vertex says the job succeeded.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

from actors.training_job import JobOutcome, JobReporter
from runtime.compute.protocol import ProtocolError, TrainSpec
from runtime.compute.trainer import REPORT_ENV
from runtime.compute.vertex import VertexBackend, VertexJob, VertexSpec
from runtime.storage.base import ObjectMissing, Storage, StorageError

TRAINER = ("python", "-m", "runtime.compute.trainer")


def mounted(uri: str) -> str:
    """Where Vertex mounts a gs:// object inside the job's container."""
    if not uri.startswith("gs://"):
        raise ValueError(f"Vertex AI jobs read gs:// objects, not {uri!r}")
    return "/gcs/" + uri.removeprefix("gs://")


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


class VertexTrainingBackend:
    """Submits, watches and cancels CustomJobs; state changes become log lines."""

    # How often `watch` polls Vertex: from `poll_s`, backing off to `max_poll_s` while the
    # state stays the same.
    poll_s = 1.0
    max_poll_s = 30.0

    def __init__(self, vertex: VertexBackend, storage: Storage, image_uri: str | None = None):
        self.vertex = vertex
        self.storage = storage
        self.image_uri = image_uri

    async def close(self) -> None:
        await self.vertex.close()

    def _key(self, job: Mapping[str, Any], name: str) -> str:
        return f"training-jobs/{job['id']}/{name}"

    def trainer_spec(self, job: Mapping[str, Any]) -> TrainSpec:
        """The trainer's spec, with paths as the container sees them."""
        config = job["config"]
        return TrainSpec(
            job_id=str(job["id"]),
            data_files=[mounted(self.storage.uri(f["storage_key"])) for f in job["files"]],
            target_column=config["target_column"],
            task=config["task"],
            algorithm=config.get("algorithm"),
            hyperparameters=config.get("hyperparameters") or {},
            test_fraction=config.get("test_fraction", 0.2),
            artifact_path=mounted(self.storage.uri(self._key(job, "model/model.joblib"))),
        )

    def spec(self, job: Mapping[str, Any]) -> VertexSpec:
        config = job["config"]
        spec = VertexSpec(
            job_id=str(job["id"]),
            display_name=f"stepwell-{job['id']}",
            command=TRAINER,
            args=(mounted(self.storage.uri(self._key(job, "spec.json"))),),
            machine_type=config.get("machine_type") or "n1-standard-4",
            accelerator_type=config.get("accelerator_type") or None,
            accelerator_count=int(config.get("accelerator_count") or 0),
            max_runtime_seconds=config.get("max_runtime_seconds"),
            env={REPORT_ENV: mounted(self.storage.uri(self._key(job, "report.jsonl")))},
            base_output_directory=self.storage.uri(self._key(job, "spec.json")).removesuffix(
                "/spec.json"
            ),
        )
        return replace(spec, image_uri=self.image_uri) if self.image_uri else spec

    async def train(self, job: Mapping[str, Any], report: JobReporter) -> JobOutcome:
        try:
            spec = self.spec(job)
            trainer = self.trainer_spec(job)
        except (ValueError, ProtocolError, StorageError) as exc:
            return JobOutcome("failed", error=str(exc))
        await self.storage.write(self._key(job, "spec.json"), _once(trainer.to_json().encode()))
        submitted = await self.vertex.submit(spec)  # re-attaches when the label exists
        await report.external_id(submitted.name)
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
        return await self._outcome(job, final, report)

    async def _outcome(
        self, job: Mapping[str, Any], final: VertexJob, report: JobReporter
    ) -> JobOutcome:
        """Metrics and parameters from the trainer's report, recorded as the job's own."""
        result: dict[str, Any] = {}
        sha256 = None
        for message in await self._report(job):
            if message.get("type") == "metric":
                await report.metric(message["step"], message["name"], message["value"])
            elif message.get("type") == "result":
                result = message
            elif message.get("type") == "artifact":
                sha256 = message.get("sha256")
        if not result:
            await report.log("the trainer's report.jsonl has no result: no metrics", "warning")
        metadata = {
            "vertex_job": final.name,
            "features": result.get("features"),
            "classes": result.get("classes"),
            "task": job["config"]["task"],
            "sha256": sha256,
            "storage_key": self._key(job, "model/model.joblib"),
        }
        return JobOutcome(
            "succeeded",
            metrics=dict(result.get("metrics") or {}),
            parameters={"algorithm": result.get("algorithm"), **(result.get("parameters") or {})},
            artifact_uri=self.storage.uri(self._key(job, "model/model.joblib")),
            metadata=metadata,
            raw_state=final.raw_state,
        )

    async def _report(self, job: Mapping[str, Any]) -> list[dict[str, Any]]:
        chunks: list[bytes] = []
        try:
            async for chunk in self.storage.read(self._key(job, "report.jsonl")):
                chunks.append(chunk)
        except ObjectMissing:
            return []
        messages = []
        for line in b"".join(chunks).decode(errors="replace").splitlines():
            try:
                messages.append(json.loads(line))
            except ValueError:
                continue
        return messages

    async def cancel(self, job: Mapping[str, Any]) -> None:
        found = await self.vertex.find(str(job["id"]))
        if found is not None:
            await self.vertex.cancel(found.name)
