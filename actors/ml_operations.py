"""ML step operations run on behalf of a run's owner: dataset profiles (and, registered by
their modules, deploy and predictions). Each takes (dispatcher, run, rendered config)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from actors import deployments, predictions
from runtime.audit import AuditContext
from runtime.auth import Principal
from runtime.errors import NotFound, ValidationFailed
from runtime.sql import queries

PROFILE_POLL_S = 0.5
BATCH_POLL_S = 0.5
DEPLOY_POLL_S = 1.0


def as_uuid(value: Any, field: str) -> UUID:
    try:
        return UUID(str(value))
    except ValueError as exc:
        raise ValidationFailed(f"{field} must be an id, not {value!r}") from exc


async def dataset_profile(d: Any, run: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
    """The profile of a dataset version (the latest unless `version`), once it is ready.

    Profiles are made in the background when a version is created; the step waits for it
    (within its own timeout) and fails if the profile failed.
    """
    dataset_id = as_uuid(config["dataset_id"], "dataset_id")
    dataset = await d.pool.fetchrow(
        queries["get_dataset_for_training"], dataset_id, run["owner_id"]
    )
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    version = await d.pool.fetchrow(
        queries["latest_dataset_version"], dataset_id, config.get("version")
    )
    if version is None:
        raise NotFound(f"dataset {dataset_id} has no version {config.get('version') or ''}")
    while True:
        row = await d.pool.fetchrow(queries["get_dataset_profile"], dataset_id, version["version"])
        if row["profile_status"] in ("succeeded", "failed"):
            break
        await asyncio.sleep(PROFILE_POLL_S)
    if row["profile_status"] == "failed":
        raise ValidationFailed(f"the profile failed: {row['profile_error']}")
    profile = row["profile"] or {}
    files = profile.get("files", [])
    return {
        "dataset_id": str(dataset_id),
        "version": version["version"],
        "row_count": profile.get("row_count", 0),
        "columns": [c for f in files for c in f.get("columns", [])],
        "warnings": [w for f in files for w in f.get("warnings", [])],
    }


def _as_owner(run: Mapping[str, Any]) -> AuditContext:
    """Steps act for the run's owner (and are audited as such)."""
    return AuditContext(Principal(user_id=run["owner_id"]), f"run:{run['id']}")


async def deploy(d: Any, run: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
    """Deploy a version (by number or alias) of a model and wait until it serves: locally at
    once, on Vertex AI when Vertex has deployed it (the step's timeout bounds the wait; a
    deploy again after a failure reuses what Vertex already has)."""
    ref = config.get("alias") or config.get("version")
    if ref is None:
        raise ValidationFailed("deploy needs a version or an alias")
    serving = ("machine_type", "min_replicas", "max_replicas")
    body = {"target": config.get("target", "local")} | {
        k: config[k] for k in serving if k in config
    }
    row = await deployments.deploy(
        d.pool,
        d.model_cache,
        _as_owner(run),
        as_uuid(config["model_id"], "model_id"),
        str(ref),
        body,
        d.compute,
        d.vertex_deployer,
    )
    while row["status"] == deployments.DeploymentStatus.DEPLOYING:
        await asyncio.sleep(DEPLOY_POLL_S)
        row = await d.pool.fetchrow(queries["get_deployment"], row["id"])
    if row["status"] != deployments.DeploymentStatus.DEPLOYED:
        raise ValidationFailed(f"the deployment failed: {row['error']}")
    return {
        "deployment_id": str(row["id"]),
        "model_version_id": str(row["model_version_id"]),
        "endpoint": row["endpoint"],
    }


async def predict(d: Any, run: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
    body = {**config, "model_version_id": as_uuid(config["model_version_id"], "model_version_id")}
    row = await predictions.predict(d.pool, d.model_cache, _as_owner(run).principal, body)
    return {
        "prediction_id": str(row["id"]),
        "predictions": row["predictions"],
        "probabilities": row["probabilities"],
    }


async def batch_predict(d: Any, run: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
    """Run a batch prediction job and wait for it (the step's timeout bounds the wait)."""
    body = {
        "model_version_id": as_uuid(config["model_version_id"], "model_version_id"),
        "input_gcs_path": config["input_path"],
        "output_gcs_path": config["output_path"],
        "return_confidence": config.get("return_confidence", False),
    }
    job = await d.batch_jobs.submit(_as_owner(run), body)
    while job["status"] in ("queued", "running"):
        await asyncio.sleep(BATCH_POLL_S)
        job = await d.pool.fetchrow(queries["get_batch_prediction_job"], job["id"], None)
    if job["status"] != "succeeded":
        raise ValidationFailed(f"the batch prediction failed: {job['error']}")
    return {
        "job_id": str(job["id"]),
        "rows": job["rows_total"],
        "failed_rows": job["rows_failed"],
        "output_path": job["output_uri"],
    }


OPERATIONS = {
    "dataset_profile": dataset_profile,
    "deploy": deploy,
    "predict": predict,
    "batch_predict": batch_predict,
}
