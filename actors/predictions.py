"""Predictions: online answers for a few rows (each one recorded), per-row scoring, and the
checks a batch prediction request must pass before a job is made for it.

Inference runs in a worker thread so the event loop keeps serving while scikit-learn works.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from uuid import UUID

import asyncpg

from actors.model_cache import ModelCache, storage_key
from runtime.audit import AuditContext, record_audit
from runtime.auth import Principal
from runtime.compute.model_file import InvalidRows, LoadedModel
from runtime.db import Conn
from runtime.errors import NotFound, ValidationFailed
from runtime.sql import queries
from runtime.storage.base import Storage

MAX_ROWS = 1000
SHOWN_ROW_PROBLEMS = 100
# Batch input formats by extension; the output is written in the input's format.
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Top-level storage areas Stepwell writes itself: dataset files and model files.
STEPWELL_AREAS = ("datasets", "models")
BATCH_ENTITY = "batch_prediction_job"
# One row's outcome: the prediction, its class probabilities, and what went wrong (if it did).
Scored = tuple[Any, dict[str, float] | None, str | None]


def input_data_problem(value: Any) -> str | None:
    """Why `input_data` is not one row (an object) or a list of 1 to MAX_ROWS rows."""
    if isinstance(value, dict):
        return None
    if not isinstance(value, list):
        return "must be an object (one row) or a list of objects"
    if not value:
        return "must hold at least one row"
    if len(value) > MAX_ROWS:
        return (
            f"at most {MAX_ROWS} rows per request ({len(value)} given); "
            "use POST /api/v1/predictions/batch for more"
        )
    return None


async def servable_version(conn: Conn, version_id: UUID, owner: str | None) -> asyncpg.Record:
    """A model version the caller can see, with what loading its model needs; 404 otherwise."""
    row = await conn.fetchrow(queries["get_servable_model_version"], version_id, owner)
    if row is None:
        raise NotFound(f"model version {version_id} not found")
    return row


def probabilities(
    model: LoadedModel, rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, float]] | None:
    """Class probabilities per row, keyed by the class as text (JSON object keys are text);
    None when the model gives none (a regressor, or a classifier without probabilities)."""
    proba = model.predict_proba(rows)
    return None if proba is None else [{str(k): p for k, p in row.items()} for row in proba]


def infer(
    model: LoadedModel, rows: Sequence[Mapping[str, Any]], with_probabilities: bool
) -> tuple[list[Any], list[dict[str, float]] | None]:
    """Predictions, and probabilities when asked for and the model gives them."""
    return model.predict(rows), probabilities(model, rows) if with_probabilities else None


def score_rows(
    model: LoadedModel, rows: Sequence[object], with_probabilities: bool
) -> list[Scored]:
    """Each row's outcome: rows with a problem get its message, the others are predicted
    together (one at a time only if predicting them together fails)."""
    problems = [model.row_problem(row) for row in rows]
    good: list[Mapping[str, Any]] = [
        row for row, p in zip(rows, problems, strict=True) if p is None and isinstance(row, Mapping)
    ]
    try:
        outcomes = _together(model, good, with_probabilities)
    except (ValueError, TypeError):
        outcomes = [_alone(model, row, with_probabilities) for row in good]
    done = iter(outcomes)
    return [(None, None, p) if p is not None else next(done) for p in problems]


def probability_classes(model: LoadedModel) -> list[str] | None:
    """The classes as `probabilities` names them; None when the model gives none."""
    if model.classes is None or not hasattr(model.pipeline, "predict_proba"):
        return None
    return [str(c) for c in model.pipeline.classes_.tolist()]


@dataclass(slots=True)
class Tally:
    """Outcomes of scored rows so far: counts, the first failures, and an error that ended it."""

    rows_total: int = 0
    rows_failed: int = 0
    failed_rows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def add(self, numbers: Sequence[int], scored: Sequence[Scored]) -> None:
        """Count rows `numbers` (1-based, as the input counts them) and their outcomes."""
        self.rows_total += len(scored)
        for number, (_, _, error) in zip(numbers, scored, strict=True):
            if error is not None:
                self.rows_failed += 1
                if len(self.failed_rows) < SHOWN_ROW_PROBLEMS:
                    self.failed_rows.append({"row": number, "error": error})

    def values(self) -> tuple[int, int, list[dict[str, Any]]]:
        return self.rows_total, self.rows_failed, self.failed_rows


def _together(
    model: LoadedModel, rows: Sequence[Mapping[str, Any]], with_probabilities: bool
) -> list[Scored]:
    if not rows:
        return []
    predicted, proba = infer(model, rows, with_probabilities)
    proba_of = proba if proba is not None else [None] * len(predicted)
    return [(p, q, None) for p, q in zip(predicted, proba_of, strict=True)]


def _alone(model: LoadedModel, row: Mapping[str, Any], with_probabilities: bool) -> Scored:
    try:
        return _together(model, [row], with_probabilities)[0]
    except (ValueError, TypeError) as exc:
        return None, None, f"cannot predict this row: {exc}"


def _check(model: LoadedModel, rows: list[Any]) -> None:
    """422 naming every problem; `details.rows` lists them row by row."""
    try:
        model.check_rows(rows)
    except InvalidRows as exc:
        found = [(i, p) for i, row in enumerate(rows) if (p := model.row_problem(row))]
        details = [{"row": i, "problem": p} for i, p in found[:SHOWN_ROW_PROBLEMS]]
        raise ValidationFailed(str(exc), {"rows": details}) from exc


async def predict(
    pool: asyncpg.Pool[Any],
    cache: ModelCache,
    principal: Principal,
    body: Mapping[str, Any],
) -> asyncpg.Record:
    """Predict for `input_data` with a visible model version and record the answer.

    `latency_ms` covers finding the model, checking the rows and inference; not the recording.
    """
    started = time.perf_counter()
    async with pool.acquire() as conn:
        version = await servable_version(conn, body["model_version_id"], principal.owner_filter)
    model = await cache.get(version)
    data = body["input_data"]
    rows = [data] if isinstance(data, dict) else list(data)
    _check(model, rows)
    wanted = bool(body.get("return_confidence"))
    predicted, proba = await asyncio.to_thread(infer, model, rows, wanted)
    latency_ms = (time.perf_counter() - started) * 1000
    row: asyncpg.Record | None = await pool.fetchrow(
        queries["insert_prediction"],
        version["owner_id"],
        version["id"],
        data,
        predicted,
        proba,
        latency_ms,
        principal.user_id,
    )
    assert row is not None  # noqa: S101 - INSERT ... RETURNING always returns the row
    return row


@dataclass(frozen=True, slots=True)
class BatchPaths:
    """Where a batch job reads and writes, as storage keys, and the data format of both."""

    input_key: str
    output_key: str
    data_format: str


def data_format(key: str) -> str | None:
    return FORMATS.get(PurePosixPath(key).suffix.lower())


def _refuse(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field} {message}", {"fields": {field: [message]}})


def _key(storage: Storage, uri: str, field: str) -> str:
    key = storage_key(storage, uri)
    if key is None:
        root = storage.uri("_")[:-1]
        raise _refuse(
            field,
            f"must be a URI in this installation's storage ({root}<key>) or a storage key "
            "like 'scoring/rows.csv'",
        )
    return key


async def _check_input_area(conn: Conn, key: str, owner: str | None) -> None:
    """Dataset files may be read only from the caller's datasets; model files never."""
    area, _, rest = key.partition("/")
    if area == "models":
        raise _refuse("input_gcs_path", "cannot be a model file")
    if area != "datasets":
        return
    try:
        dataset_id = uuid.UUID(rest.partition("/")[0])
    except ValueError:
        dataset_id = None
    if dataset_id is None or not await conn.fetchval(
        queries["find_dataset_for_batch_input"], dataset_id, owner
    ):
        raise _refuse("input_gcs_path", "is in no dataset of yours")


async def batch_paths(
    conn: Conn, storage: Storage, owner: str | None, body: Mapping[str, Any]
) -> BatchPaths:
    """The keys of a batch request's paths; 422 naming the first path that cannot be used."""
    input_key = _key(storage, body["input_gcs_path"], "input_gcs_path")
    output_key = _key(storage, body["output_gcs_path"], "output_gcs_path")
    fmt = data_format(input_key)
    if fmt is None:
        raise _refuse("input_gcs_path", f"must end in {', '.join(FORMATS)} (CSV or JSON lines)")
    if data_format(output_key) not in (None, fmt):
        raise _refuse("output_gcs_path", f"must match the input's format ({fmt})")
    if output_key == input_key:
        raise _refuse("output_gcs_path", "must differ from input_gcs_path")
    if output_key.partition("/")[0] in STEPWELL_AREAS:
        areas = " or ".join(f"{a}/" for a in STEPWELL_AREAS)
        raise _refuse("output_gcs_path", f"cannot be under {areas}: Stepwell keeps its files there")
    await _check_input_area(conn, input_key, owner)
    if not await storage.exists(input_key):
        raise _refuse("input_gcs_path", f"names nothing stored ({input_key!r})")
    return BatchPaths(input_key, output_key, fmt)


async def record_batch_job(
    conn: Conn,
    ctx: AuditContext,
    version: asyncpg.Record | Mapping[str, Any],
    storage: Storage,
    paths: BatchPaths,
    node_id: str,
) -> asyncpg.Record:
    """The job's row, `queued` on `node_id`, owned by the model's owner, and its audit entry."""
    uris = storage.uri(paths.input_key), storage.uri(paths.output_key)
    row = await conn.fetchrow(
        queries["insert_batch_prediction_job"],
        version["owner_id"],
        version["id"],
        *uris,
        ctx.principal.user_id,
        node_id,
    )
    assert row is not None  # noqa: S101 - INSERT ... RETURNING always returns the row
    await record_audit(
        conn,
        ctx,
        action="create",
        entity_type=BATCH_ENTITY,
        entity_id=str(row["id"]),
        owner_id=version["owner_id"],
        changes={"model_version_id": str(version["id"]), "input": uris[0], "output": uris[1]},
    )
    return row
