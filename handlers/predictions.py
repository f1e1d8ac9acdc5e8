"""Predictions: online answers (each recorded and listable) and batch prediction jobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp_apigami import (
    docs,
    match_info_schema,
    querystring_schema,
    request_schema,
    response_schema,
)
from marshmallow import Schema, ValidationError, fields, validate

from actors.batch_predictions import batch_jobs_of
from actors.model_cache import model_cache_of
from actors.models import json_problem
from actors.predictions import FORMATS, MAX_ROWS, input_data_problem, predict
from handlers.common import (
    audit_ctx,
    envelope,
    error_responses,
    list_envelope,
    ok,
    page_answer,
    principal_of,
    record_json,
    validated,
)
from runtime.errors import NotFound
from runtime.keys import DB_POOL
from runtime.pagination import PageQuerySchema, fetch_page
from runtime.sql import queries

TAGS = ["predictions"]
READ_ERRORS = error_responses(401, 404, 422)
EXAMPLE_ID = "0b9f6a2e-5d1c-4f7e-9a43-2c8e1d7b6f10"
EXAMPLE_ROWS = [{"x1": 0.4, "x2": -1.2, "plan": "pro"}, {"x1": None, "x2": 0.3, "plan": "basic"}]
EXAMPLE_PROBABILITIES = [{"0": 0.18, "1": 0.82}, {"0": 0.91, "1": 0.09}]
BATCH_EXAMPLE = {
    "model_version_id": EXAMPLE_ID,
    "input_gcs_path": "gs://acme-ml/stepwell/scoring/2026-11-22.csv",
    "output_gcs_path": "gs://acme-ml/stepwell/scoring/2026-11-22.predictions.csv",
    "return_confidence": True,
}


def _rule(problem_of: Callable[[Any], str | None]) -> Callable[[Any], None]:
    """A marshmallow validator from a rule that returns its problem (or None)."""

    def check(value: Any) -> None:
        problem = problem_of(value)
        if problem is not None:
            raise ValidationError(problem)

    return check


class PredictRequestSchema(Schema):
    model_version_id = fields.UUID(required=True, metadata={"example": EXAMPLE_ID})
    input_data = fields.Raw(
        required=True,
        validate=[_rule(input_data_problem), _rule(json_problem)],
        metadata={
            "description": f"One row (feature name to value) or a list of 1 to {MAX_ROWS} rows; "
            "null values are imputed as in training",
            "example": EXAMPLE_ROWS,
        },
    )
    return_confidence = fields.Boolean(
        load_default=False,
        metadata={"description": "Also return each class's probability (classifiers only)"},
    )


class PredictResultSchema(Schema):
    id = fields.UUID(metadata={"description": "The recorded prediction"})
    model_version_id = fields.UUID(metadata={"example": EXAMPLE_ID})
    predictions = fields.List(fields.Raw(), metadata={"example": [1, 0]})
    probabilities = fields.List(
        fields.Dict(keys=fields.String(), values=fields.Float()),
        allow_none=True,
        metadata={
            "description": "Per row, class to probability; null unless asked for and the model "
            "is a classifier",
            "example": EXAMPLE_PROBABILITIES,
        },
    )
    latency_ms = fields.Float(
        metadata={"description": "Finding the model, checking the rows, inference", "example": 3.1}
    )
    created_at = fields.DateTime()


class PredictionSchema(PredictResultSchema):
    input_data = fields.Raw(metadata={"example": EXAMPLE_ROWS})
    owner_id = fields.String(metadata={"description": "The model's owner", "example": "user-42"})
    created_by = fields.String(metadata={"description": "Who asked", "example": "user-42"})


class PredictionListQuerySchema(PageQuerySchema):
    model_version_id = fields.UUID()


class BatchRequestSchema(Schema):
    model_version_id = fields.UUID(required=True)
    input_gcs_path = fields.String(
        required=True,
        validate=validate.Length(min=1, max=2048),
        metadata={
            "description": "A storage URI of this installation (gs://bucket/prefix/<key> on "
            "GCS, file:///<storage root>/<key> on local storage) or a storage key, ending in "
            f"{', '.join(FORMATS)}; a dataset file must be in one of your datasets",
            "example": BATCH_EXAMPLE["input_gcs_path"],
        },
    )
    output_gcs_path = fields.String(
        required=True,
        validate=validate.Length(min=1, max=2048),
        metadata={
            "description": "Where to write the input's rows with `prediction`, "
            "`probability_<class>` and `error` columns, in the input's format; not under "
            "datasets/ or models/",
            "example": BATCH_EXAMPLE["output_gcs_path"],
        },
    )
    return_confidence = fields.Boolean(load_default=False)


class BatchJobSchema(Schema):
    id = fields.UUID()
    model_version_id = fields.UUID()
    input_uri = fields.String(metadata={"example": BATCH_EXAMPLE["input_gcs_path"]})
    output_uri = fields.String(metadata={"example": BATCH_EXAMPLE["output_gcs_path"]})
    status = fields.String(
        validate=validate.OneOf(("queued", "running", "succeeded", "failed")),
        metadata={"description": "succeeded even when some rows failed", "example": "succeeded"},
    )
    rows_total = fields.Integer(metadata={"example": 25000})
    rows_failed = fields.Integer(metadata={"example": 1})
    failed_rows = fields.List(
        fields.Dict(),
        metadata={
            "description": "The first 100 failed rows: 1-based row number and why",
            "example": [{"row": 3, "error": "row 0: feature 'x1' must be a number, got str"}],
        },
    )
    error = fields.String(allow_none=True, metadata={"description": "Why the job failed"})
    owner_id = fields.String()
    created_by = fields.String()
    created_at = fields.DateTime()
    completed_at = fields.DateTime(allow_none=True)


class IdPathSchema(Schema):
    id = fields.UUID(required=True)


BatchJobResponse = envelope(BatchJobSchema, "BatchPredictionJobResponse")


@docs(
    tags=TAGS,
    summary="Predict with a model version",
    description="Checks the rows against the model's features (422 naming each problem, "
    "`details.rows`), predicts, and records the prediction. Any version you can see that "
    "Stepwell's trainer made can answer; the first call loads it (deploying preloads it).",
    responses=error_responses(401, 404, 422),
)
@request_schema(
    PredictRequestSchema,
    example={"model_version_id": EXAMPLE_ID, "input_data": EXAMPLE_ROWS, "return_confidence": True},
)
@response_schema(envelope(PredictResultSchema, "PredictResponse"), 201)
async def create_prediction(request: web.Request) -> web.Response:
    cache = model_cache_of(request.app)
    row = await predict(request.app[DB_POOL], cache, principal_of(request), validated(request))
    return ok(record_json(row, skip=("input_data", "owner_id", "created_by")), status=201)


@docs(tags=TAGS, summary="List recorded predictions, newest first", responses=READ_ERRORS)
@querystring_schema(PredictionListQuerySchema, put_into="query")
@response_schema(list_envelope(PredictionSchema, "PredictionListResponse"), 200)
async def list_predictions(request: web.Request) -> web.Response:
    q = validated(request, "query")
    args = (principal_of(request).owner_filter, q.get("model_version_id"))
    async with request.app[DB_POOL].acquire() as conn:
        query = queries["list_predictions"]
        page = await fetch_page(conn, query, *args, page=q["page"], limit=q["limit"])
    return page_answer(page)


@docs(tags=TAGS, summary="Get a recorded prediction", responses=READ_ERRORS)
@match_info_schema(IdPathSchema, put_into="path")
@response_schema(envelope(PredictionSchema, "PredictionResponse"), 200)
async def get_prediction(request: web.Request) -> web.Response:
    prediction_id = validated(request, "path")["id"]
    row = await request.app[DB_POOL].fetchrow(
        queries["get_prediction"], prediction_id, principal_of(request).owner_filter
    )
    if row is None:
        raise NotFound(f"prediction {prediction_id} not found")
    return ok(record_json(row))


@docs(
    tags=TAGS,
    summary="Start a batch prediction job over a stored CSV or JSON lines file",
    description="Answers 202 with the job `queued`; follow it with GET "
    "/api/v1/predictions/batch/{id}. Rows that cannot be scored are written with an `error` "
    "and listed in `failed_rows`; the job still succeeds. An unreadable input fails the job "
    "(rows already written stay in the output).",
    responses=error_responses(401, 404, 422),
)
@request_schema(BatchRequestSchema, example=BATCH_EXAMPLE)
@response_schema(BatchJobResponse, 202)
async def create_batch_job(request: web.Request) -> web.Response:
    row = await batch_jobs_of(request.app).submit(audit_ctx(request), validated(request))
    return ok(record_json(row), status=202)


@docs(tags=TAGS, summary="Get a batch prediction job", responses=READ_ERRORS)
@match_info_schema(IdPathSchema, put_into="path")
@response_schema(BatchJobResponse, 200)
async def get_batch_job(request: web.Request) -> web.Response:
    job_id = validated(request, "path")["id"]
    row = await request.app[DB_POOL].fetchrow(
        queries["get_batch_prediction_job"], job_id, principal_of(request).owner_filter
    )
    if row is None:
        raise NotFound(f"batch prediction job {job_id} not found")
    return ok(record_json(row))


def routes() -> list[web.RouteDef]:
    """`/predictions/batch` comes before `/predictions/{id}`, which would match it."""
    base = "/api/v1/predictions"
    return [
        web.post(base, create_prediction),
        web.get(base, list_predictions, allow_head=False),
        web.post(base + "/batch", create_batch_job),
        web.get(base + "/batch/{id}", get_batch_job, allow_head=False),
        web.get(base + "/{id}", get_prediction, allow_head=False),
    ]
