"""Training on this machine: dataset files copied from storage, the scikit-learn worker run by
`LocalTrainer`, the artifact stored beside the model."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from actors.training_job import JobOutcome, JobReporter
from runtime.compute.local import LocalTrainer
from runtime.compute.protocol import OutcomeStatus, ProtocolError, TrainSpec
from runtime.storage.base import Storage

# Formats the worker reads; other files of a dataset version are left out.
TRAINABLE = (".csv", ".jsonl", ".ndjson", ".parquet")


class LocalTrainingBackend:
    """Runs jobs with `LocalTrainer` (at most `max_concurrent` at once, the rest queue)."""

    def __init__(self, storage: Storage, work_dir: Path, max_concurrent: int = 2) -> None:
        self.storage = storage
        self.work_dir = work_dir
        self.trainer = LocalTrainer(max_concurrent=max_concurrent)

    async def close(self) -> None:
        await self.trainer.close()

    async def cancel(self, job: Mapping[str, Any]) -> None:
        self.trainer.cancel(str(job["id"]))

    async def train(self, job: Mapping[str, Any], report: JobReporter) -> JobOutcome:
        config = job["config"]
        files = [f for f in job["files"] if str(f["name"]).lower().endswith(TRAINABLE)]
        if not files:
            return JobOutcome(
                "failed",
                error="the dataset version has no CSV, JSON lines or Parquet file to train on",
            )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            await report.status("pending")
            await report.log(
                f"copying {len(files)} file(s) of dataset version {job['dataset_version']}"
            )
            paths = [await self._fetch(f, Path(tmp)) for f in files]
            try:
                spec = TrainSpec(
                    job_id=str(job["id"]),
                    data_files=paths,
                    target_column=config["target_column"],
                    task=config["task"],
                    algorithm=config.get("algorithm"),
                    hyperparameters=config.get("hyperparameters") or {},
                    test_fraction=config.get("test_fraction", 0.2),
                    artifact_path=str(Path(tmp) / "model.joblib"),
                )
            except ProtocolError as exc:
                return JobOutcome("failed", error=str(exc))
            return await self._run(job, spec, report)

    async def _run(
        self, job: Mapping[str, Any], spec: TrainSpec, report: JobReporter
    ) -> JobOutcome:
        async def on_message(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "started":
                await report.status("running")
            elif kind == "log":
                await report.log(message["message"], message["level"])
            elif kind == "metric":
                await report.metric(message["step"], message["name"], message["value"])
            elif kind == "error":
                await report.log(message["message"], "error")

        max_runtime = job["config"].get("max_runtime_seconds")
        outcome = await self.trainer.run(spec, on_message, max_runtime)
        if outcome.status is not OutcomeStatus.SUCCEEDED:
            error = outcome.message
            if outcome.status is OutcomeStatus.TIMED_OUT:
                error = f"stopped after max_runtime_seconds={max_runtime}"
            return JobOutcome(outcome.status.value, error=error)
        assert outcome.result is not None and outcome.artifact is not None  # noqa: S101
        key = f"models/{job['model_id']}/training-jobs/{job['id']}/model.joblib"
        stored = await self.storage.write(key, _chunks(Path(outcome.artifact.path)))
        await report.log(f"stored the model ({stored.size_bytes} bytes) at {stored.uri}")
        result = outcome.result
        return JobOutcome(
            "succeeded",
            metrics=dict(result.metrics),
            parameters={"algorithm": result.algorithm, **result.parameters},
            metadata={
                "features": list(result.features),
                "classes": result.classes,
                "task": spec.task,
                "target": spec.target_column,
                "sha256": stored.sha256,
                "storage_key": key,
            },
            artifact_uri=stored.uri,
        )

    async def _fetch(self, file: Mapping[str, Any], into: Path) -> str:
        path = into / Path(str(file["name"])).name
        with path.open("wb") as handle:
            async for chunk in self.storage.read(file["storage_key"]):
                await asyncio.to_thread(handle.write, chunk)
        return str(path)


async def _chunks(path: Path, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, size):
            yield chunk
