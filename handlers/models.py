"""Model registry: models, versions with lineage, aliases, and a dataset version's models."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp_apigami import (
    docs,
    match_info_schema,
    querystring_schema,
    request_schema,
    response_schema,
)
from marshmallow import Schema, ValidationError, fields, validate

from actors import models as mdl
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
from runtime.db import Conn
from runtime.errors import NotFound
from runtime.keys import DB_POOL
from runtime.pagination import PageQuerySchema, fetch_page
from runtime.sql import queries

TAGS = ["models"]
READ_ERRORS = error_responses(401, 404, 422)
WRITE_ERRORS = error_responses(401, 404, 409, 422)
STATUS_FILTERS = (*(s.value for s in mdl.ModelStatus), "all")
EXAMPLE_ID = "6f1c3c8e-8a7b-4c1e-9d2a-0a4c4f3b2e11"
EXAMPLE_VERSION = {
    "artifact_uri": "gs://ml-artifacts/churn/7/model.joblib",
    "framework": "scikit-learn",
    "metrics": {"accuracy": 0.93, "f1": 0.88},
    "parameters": {"n_estimators": 200, "max_depth": 8},
    "dataset_version_id": EXAMPLE_ID,
    "aliases": ["challenger"],
}


def _check(problem_of: Callable[[Any], str | None]) -> Callable[[Any], None]:
    """A marshmallow validator from a rule that returns its problem (or None)."""

    def check(value: Any) -> None:
        problem = problem_of(value)
        if problem is not None:
            raise ValidationError(problem)

    return check


class ModelCreateSchema(Schema):
    name = fields.String(
        required=True, validate=validate.Length(min=1, max=200), metadata={"example": "churn"}
    )
    description = fields.String(
        validate=validate.Length(max=10_000), metadata={"example": "Predicts churn"}
    )
    model_type = fields.String(
        required=True, validate=validate.OneOf(mdl.MODEL_TYPES), metadata={"example": "regression"}
    )
    framework = fields.String(
        required=True, validate=validate.OneOf(mdl.FRAMEWORKS), metadata={"example": "pytorch"}
    )


class ModelSchema(ModelCreateSchema):
    id = fields.UUID(metadata={"example": EXAMPLE_ID})
    status = fields.String(metadata={"example": "active"})
    owner_id = fields.String(metadata={"example": "user-42"})
    created_by = fields.String(metadata={"example": "user-42"})
    latest_version = fields.Integer(allow_none=True, metadata={"example": 7})
    aliases = fields.Dict(
        keys=fields.String(), values=fields.Integer(), metadata={"example": {"champion": 6}}
    )
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    archived_at = fields.DateTime(allow_none=True)


class ModelListQuerySchema(PageQuerySchema):
    name = fields.String(validate=validate.Length(min=1, max=200))
    model_type = fields.String(validate=validate.OneOf(mdl.MODEL_TYPES))
    framework = fields.String(validate=validate.OneOf(mdl.FRAMEWORKS))
    status = fields.String(
        load_default="active",
        validate=validate.OneOf(STATUS_FILTERS),
        metadata={"description": "active (default), archived or all"},
    )


class ModelVersionFieldsSchema(Schema):
    """What PUT may change; `aliases` is the full list that should point at this version."""

    description = fields.String(
        validate=validate.Length(max=10_000), metadata={"example": "Retrained on March"}
    )
    metrics = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=200)),
        validate=_check(mdl.metrics_problem),
        metadata={"description": "Numbers only", "example": EXAMPLE_VERSION["metrics"]},
    )
    metadata = fields.Dict(
        validate=_check(mdl.json_problem), metadata={"example": {"notes": "balanced classes"}}
    )
    aliases = fields.List(
        fields.String(validate=_check(mdl.alias_problem)),
        validate=validate.Length(max=50),
        metadata={"example": ["champion"]},
    )


class ModelVersionCreateSchema(ModelVersionFieldsSchema):
    artifact_uri = fields.String(
        required=True,
        validate=[validate.Length(min=1, max=2048), _check(mdl.artifact_uri_problem)],
        metadata={"example": EXAMPLE_VERSION["artifact_uri"]},
    )
    framework = fields.String(
        validate=validate.OneOf(mdl.FRAMEWORKS),
        metadata={"description": "Defaults to the model's", "example": "scikit-learn"},
    )
    parameters = fields.Dict(
        validate=_check(mdl.json_problem), metadata={"example": EXAMPLE_VERSION["parameters"]}
    )
    dataset_version_id = fields.UUID(metadata={"description": "Lineage: the training data"})
    training_job_id = fields.UUID(metadata={"description": "Lineage: the job that trained it"})


class ModelVersionSchema(ModelVersionCreateSchema):
    id = fields.UUID()
    model_id = fields.UUID(metadata={"example": EXAMPLE_ID})
    version = fields.Integer(metadata={"example": 7})
    aliases = fields.List(fields.String(), metadata={"example": ["champion"]})
    dataset_id = fields.UUID(allow_none=True)
    dataset_version = fields.Integer(allow_none=True, metadata={"example": 3})
    created_by = fields.String()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class DatasetModelVersionSchema(ModelVersionSchema):
    model_name = fields.String(metadata={"example": "churn"})


class ModelPathSchema(Schema):
    id = fields.UUID(required=True)


class ModelVersionPathSchema(ModelPathSchema):
    v = fields.String(
        required=True,
        validate=validate.Regexp(mdl.ALIAS_RE.pattern + r"\Z"),
        metadata={"description": "A version number or an alias name"},
    )


class DatasetVersionPathSchema(Schema):
    dataset_id = fields.UUID(required=True)
    v = fields.Integer(required=True, validate=validate.Range(min=1, max=mdl.MAX_VERSION))


ModelResponse = envelope(ModelSchema, "ModelResponse")
ModelVersionResponse = envelope(ModelVersionSchema, "ModelVersionResponse")


def _path(request: web.Request) -> dict[str, Any]:
    return validated(request, "path")


async def _write(
    request: web.Request, action: Callable[..., Awaitable[asyncpg.Record]], *args: Any
) -> asyncpg.Record:
    """Run one of the registry's mutations in its own transaction."""
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        return await action(conn, audit_ctx(request), *args)


async def _page(conn: Conn, request: web.Request, query: str, *args: Any) -> web.Response:
    """One page of `query`'s rows in the list envelope."""
    q = validated(request, "query")
    page = await fetch_page(conn, queries[query], *args, page=q["page"], limit=q["limit"])
    return page_answer(page)


@docs(tags=TAGS, summary="Register a model", responses=error_responses(401, 409, 422))
@request_schema(
    ModelCreateSchema,
    example={"name": "churn", "model_type": "classification", "framework": "scikit-learn"},
)
@response_schema(ModelResponse, 201)
async def create_model(request: web.Request) -> web.Response:
    row = await _write(request, mdl.create_model, validated(request))
    return ok(record_json(row), status=201)


@docs(tags=TAGS, summary="List models (active by default)", responses=error_responses(401, 422))
@querystring_schema(ModelListQuerySchema, put_into="query")
@response_schema(list_envelope(ModelSchema, "ModelListResponse"), 200)
async def list_models(request: web.Request) -> web.Response:
    q = validated(request, "query")
    filters = (q.get("name"), q.get("model_type"), q.get("framework"))
    status = None if q["status"] == "all" else q["status"]
    async with request.app[DB_POOL].acquire() as conn:
        owner = principal_of(request).owner_filter
        return await _page(conn, request, "list_models", owner, status, *filters)


@docs(tags=TAGS, summary="Get a model with its aliases and latest version", responses=READ_ERRORS)
@match_info_schema(ModelPathSchema, put_into="path")
@response_schema(ModelResponse, 200)
async def get_model(request: web.Request) -> web.Response:
    async with request.app[DB_POOL].acquire() as conn:
        row = await mdl.get_model(conn, _path(request)["id"], principal_of(request).owner_filter)
    return ok(record_json(row))


@docs(
    tags=TAGS,
    summary="Archive a model",
    description="The model stays readable but takes no new versions or edits. Archiving an "
    "archived model answers 200 again.",
    responses=READ_ERRORS,
)
@match_info_schema(ModelPathSchema, put_into="path")
@response_schema(ModelResponse, 200)
async def archive_model(request: web.Request) -> web.Response:
    return ok(record_json(await _write(request, mdl.archive_model, _path(request)["id"])))


@docs(
    tags=TAGS,
    summary="Add the next version of a model",
    description="Numbered from 1 without gaps. `aliases` move here from any other version. "
    "`dataset_version_id` must be a dataset version you can see. Archived models answer 409.",
    responses=WRITE_ERRORS,
)
@match_info_schema(ModelPathSchema, put_into="path")
@request_schema(ModelVersionCreateSchema, example=EXAMPLE_VERSION)
@response_schema(ModelVersionResponse, 201)
async def create_version(request: web.Request) -> web.Response:
    row = await _write(request, mdl.create_version, _path(request)["id"], validated(request))
    return ok(record_json(row), status=201)


@docs(tags=TAGS, summary="List a model's versions, newest first", responses=READ_ERRORS)
@match_info_schema(ModelPathSchema, put_into="path")
@querystring_schema(PageQuerySchema, put_into="query")
@response_schema(list_envelope(ModelVersionSchema, "ModelVersionListResponse"), 200)
async def list_versions(request: web.Request) -> web.Response:
    model_id = _path(request)["id"]
    async with request.app[DB_POOL].acquire() as conn:
        await mdl.get_model(conn, model_id, principal_of(request).owner_filter)
        return await _page(conn, request, "list_model_versions", model_id)


@docs(
    tags=TAGS,
    summary="Get a version by number or alias (`/versions/champion`)",
    responses=READ_ERRORS,
)
@match_info_schema(ModelVersionPathSchema, put_into="path")
@response_schema(ModelVersionResponse, 200)
async def get_version(request: web.Request) -> web.Response:
    path = _path(request)
    async with request.app[DB_POOL].acquire() as conn:
        row = await mdl.get_version(conn, path["id"], path["v"], principal_of(request).owner_filter)
    return ok(record_json(row))


@docs(
    tags=TAGS,
    summary="Update a model version and set its aliases",
    description="`metrics` and `metadata` are replaced whole. `aliases` is the full list that "
    "should point here: new ones move from wherever they were, missing ones are removed.",
    responses=WRITE_ERRORS,
)
@match_info_schema(ModelVersionPathSchema, put_into="path")
@request_schema(ModelVersionFieldsSchema, example={"aliases": ["champion"], "description": "v7"})
@response_schema(ModelVersionResponse, 200)
async def update_version(request: web.Request) -> web.Response:
    path = _path(request)
    args = (path["id"], path["v"], validated(request))
    return ok(record_json(await _write(request, mdl.update_version, *args)))


@docs(
    tags=["models", "datasets"],
    summary="Model versions trained on a dataset version (lineage)",
    description="`v` is the dataset version number. Lists only models you can see.",
    responses=READ_ERRORS,
)
@match_info_schema(DatasetVersionPathSchema, put_into="path")
@querystring_schema(PageQuerySchema, put_into="query")
@response_schema(list_envelope(DatasetModelVersionSchema, "DatasetModelVersionListResponse"), 200)
async def list_dataset_version_models(request: web.Request) -> web.Response:
    path, owner = _path(request), principal_of(request).owner_filter
    async with request.app[DB_POOL].acquire() as conn:
        dataset_version_id = await conn.fetchval(
            queries["find_dataset_version_by_number"], path["dataset_id"], path["v"], owner
        )
        if dataset_version_id is None:
            raise NotFound(f"dataset {path['dataset_id']} has no version {path['v']}")
        return await _page(conn, request, "list_dataset_version_models", dataset_version_id, owner)


def routes() -> list[web.RouteDef]:
    base = "/api/v1/models"
    return [
        web.post(base, create_model),
        web.get(base, list_models, allow_head=False),
        web.get(base + "/{id}", get_model, allow_head=False),
        web.delete(base + "/{id}", archive_model),
        web.post(base + "/{id}/versions", create_version),
        web.get(base + "/{id}/versions", list_versions, allow_head=False),
        web.get(base + "/{id}/versions/{v}", get_version, allow_head=False),
        web.put(base + "/{id}/versions/{v}", update_version),
        web.get(
            "/api/v1/datasets/{dataset_id}/versions/{v}/model-versions",
            list_dataset_version_models,
            allow_head=False,
        ),
    ]
