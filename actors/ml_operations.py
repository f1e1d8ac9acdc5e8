"""ML step operations run on behalf of a run's owner: dataset profiles (and, registered by
their modules, deploy and predictions). Each takes (dispatcher, run, rendered config)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from runtime.errors import NotFound, ValidationFailed
from runtime.sql import queries

PROFILE_POLL_S = 0.5


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


OPERATIONS = {"dataset_profile": dataset_profile}
