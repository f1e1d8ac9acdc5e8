"""Datasets: create, list, read, delete; uploads (multipart or signed URLs); versions and
their profiles."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

from aiohttp import web
from aiohttp_apigami import (
    docs,
    match_info_schema,
    querystring_schema,
    request_schema,
    response_schema,
)
from marshmallow import Schema, ValidationError, fields, validate

from actors import dataset_uploads as uploads
from actors import datasets as ds
from actors.profile_jobs import PROFILER
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
from runtime.errors import BadRequest, NotFound, ValidationFailed
from runtime.keys import DB_POOL, STORAGE
from runtime.middleware import read_json
from runtime.pagination import PageQuerySchema, fetch_page
from runtime.sql import queries

TAGS = ["datasets"]
EXAMPLE_ID = "0b5c7f0e-3f43-4c55-9a4e-2d1f3c9b7a10"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
PROFILE_STATUSES = ("pending", "running", "succeeded", "failed")


class DatasetCreateSchema(Schema):
    name = fields.String(
        required=True, validate=validate.Length(min=1, max=200), metadata={"example": "churn"}
    )
    description = fields.String(
        validate=validate.Length(max=10_000), metadata={"example": "Monthly churn snapshots"}
    )
    dataset_type = fields.String(
        validate=validate.OneOf(ds.DATASET_TYPES), metadata={"example": "tabular"}
    )


class DatasetSchema(DatasetCreateSchema):
    id = fields.UUID(metadata={"example": EXAMPLE_ID})
    owner_id = fields.String(metadata={"example": "user-42"})
    status = fields.String(metadata={"example": "active"})
    created_by = fields.String(metadata={"example": "user-42"})
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    deleted_at = fields.DateTime(allow_none=True)


class DatasetListQuerySchema(PageQuerySchema):
    name = fields.String(validate=validate.Length(min=1, max=200))
    dataset_type = fields.String(validate=validate.OneOf(ds.DATASET_TYPES))


class DatasetPathSchema(Schema):
    id = fields.UUID(required=True)


class DatasetVersionPathSchema(DatasetPathSchema):
    v = fields.Integer(required=True, validate=validate.Range(min=1, max=2**31 - 1))


class DatasetSignedFileSchema(Schema):
    name = fields.String(required=True, metadata={"example": "train.csv"})
    content_type = fields.String(validate=validate.Length(max=255), load_default=None)


class DatasetSignedUploadSchema(Schema):
    files = fields.List(
        fields.Nested(DatasetSignedFileSchema),
        required=True,
        validate=validate.Length(min=1, max=uploads.MAX_FILES),
    )


class DatasetUploadFileSchema(Schema):
    name = fields.String(metadata={"example": "train.csv"})
    storage_key = fields.String(metadata={"description": "multipart uploads"})
    content_type = fields.String(allow_none=True, metadata={"example": "text/csv"})
    size_bytes = fields.Integer(allow_none=True, metadata={"example": 1048576})
    sha256 = fields.String(allow_none=True, metadata={"example": SHA})
    upload_url = fields.String(metadata={"description": "signed-URL uploads: PUT the bytes here"})
    method = fields.String(metadata={"example": "PUT"})
    headers = fields.Dict(metadata={"example": {"Content-Type": "text/csv"}})


class DatasetUploadSchema(Schema):
    upload_id = fields.UUID(required=True, metadata={"example": EXAMPLE_ID})
    expires_at = fields.DateTime(metadata={"description": "signed-URL uploads only"})
    files = fields.List(fields.Nested(DatasetUploadFileSchema), required=True)


class DatasetVersionCreateSchema(Schema):
    upload_id = fields.UUID(required=True, metadata={"example": EXAMPLE_ID})
    description = fields.String(
        validate=validate.Length(max=10_000), metadata={"example": "March snapshot"}
    )


class DatasetVersionFileSchema(Schema):
    name = fields.String(metadata={"example": "train.csv"})
    storage_key = fields.String()
    uri = fields.String(metadata={"example": "gs://bucket/datasets/.../train.csv"})
    size_bytes = fields.Integer(metadata={"example": 1048576})
    sha256 = fields.String(metadata={"example": SHA})
    content_type = fields.String(allow_none=True, metadata={"example": "text/csv"})


class DatasetVersionSchema(Schema):
    id = fields.UUID(metadata={"example": EXAMPLE_ID})
    dataset_id = fields.UUID(metadata={"example": EXAMPLE_ID})
    version = fields.Integer(metadata={"example": 1})
    description = fields.String()
    files = fields.List(fields.Nested(DatasetVersionFileSchema))
    total_digest = fields.String(
        metadata={"description": 'SHA-256 over the sorted lines "<name> <sha256>\\n"'}
    )
    size_bytes = fields.Integer(metadata={"example": 1048576})
    row_count = fields.Integer(allow_none=True, metadata={"example": 25000})
    profile_status = fields.String(validate=validate.OneOf(PROFILE_STATUSES))
    profile_error = fields.String(allow_none=True)
    created_by = fields.String(metadata={"example": "user-42"})
    created_at = fields.DateTime()


class DatasetProfileSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(PROFILE_STATUSES))
    profile = fields.Dict(
        allow_none=True,
        metadata={
            "description": "row_count, sampled and per file: format, columns (type, nullable, "
            "null_count, null_fraction, distinct_count, min/max/mean/std and histogram or "
            "top_values) and warnings"
        },
    )
    error = fields.String(allow_none=True, metadata={"example": "bad.csv: the file is empty"})


DatasetResponse = envelope(DatasetSchema, "DatasetResponse")
DatasetListResponse = list_envelope(DatasetSchema, "DatasetListResponse")
UploadResponse = envelope(DatasetUploadSchema, "DatasetUploadResponse")
VersionResponse = envelope(DatasetVersionSchema, "DatasetVersionResponse")
VersionListResponse = list_envelope(DatasetVersionSchema, "DatasetVersionListResponse")
ProfileResponse = envelope(DatasetProfileSchema, "DatasetProfileResponse")


def _path_id(request: web.Request) -> UUID:
    dataset_id: UUID = validated(request, "path")["id"]
    return dataset_id


@docs(tags=TAGS, summary="Create a dataset", responses=error_responses(401, 409, 422))
@request_schema(DatasetCreateSchema, example={"name": "churn", "dataset_type": "tabular"})
@response_schema(DatasetResponse, 201)
async def create_dataset(request: web.Request) -> web.Response:
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        row = await ds.create_dataset(conn, audit_ctx(request), validated(request))
    return ok(record_json(row), status=201)


@docs(tags=TAGS, summary="List datasets", responses=error_responses(401, 422))
@querystring_schema(DatasetListQuerySchema, put_into="query")
@response_schema(DatasetListResponse, 200)
async def list_datasets(request: web.Request) -> web.Response:
    q = validated(request, "query")
    async with request.app[DB_POOL].acquire() as conn:
        page = await fetch_page(
            conn,
            queries["list_datasets"],
            principal_of(request).owner_filter,
            q.get("name"),
            q.get("dataset_type"),
            page=q["page"],
            limit=q["limit"],
        )
    return page_answer(page)


@docs(tags=TAGS, summary="Get a dataset", responses=error_responses(401, 404, 422))
@match_info_schema(DatasetPathSchema, put_into="path")
@response_schema(DatasetResponse, 200)
async def get_dataset(request: web.Request) -> web.Response:
    async with request.app[DB_POOL].acquire() as conn:
        row = await ds.get_dataset(conn, _path_id(request), principal_of(request).owner_filter)
    return ok(record_json(row))


@docs(
    tags=TAGS,
    summary="Delete a dataset",
    description="Hides the dataset (later reads answer 404); its files and versions are kept "
    "until a purge.",
    responses={204: {"description": "Deleted"}, **error_responses(401, 404, 422)},
)
@match_info_schema(DatasetPathSchema, put_into="path")
async def delete_dataset(request: web.Request) -> web.Response:
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        await ds.delete_dataset(conn, audit_ctx(request), _path_id(request))
    return web.Response(status=204)


UPLOAD_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "additionalProperties": {"format": "binary"}}
        },
        "application/json": {
            "schema": DatasetSignedUploadSchema,
            "example": {"files": [{"name": "train.csv", "content_type": "text/csv"}]},
        },
    }
}


@docs(
    tags=TAGS,
    summary="Upload files, or ask for signed upload URLs",
    description="`multipart/form-data`: every part is a file, streamed to storage (no size "
    "limit beyond storage's); the answer lists sizes and SHA-256 digests. `application/json` "
    '`{"files": [{"name", "content_type"}]}`: the answer holds a signed PUT URL per file, '
    "valid for an hour. File names (percent-encoded ones are decoded) may not be empty, hold "
    "path separators or control characters, start with a dot, or repeat in one upload. "
    "Make a version from the upload with `POST /datasets/{id}/versions`.",
    requestBody=UPLOAD_BODY,
    responses=error_responses(400, 401, 404, 415, 422),
)
@match_info_schema(DatasetPathSchema, put_into="path")
@response_schema(UploadResponse, 201)
async def upload(request: web.Request) -> web.Response:
    dataset_id, ctx = _path_id(request), audit_ctx(request)
    pool, storage = request.app[DB_POOL], request.app[STORAGE]
    async with pool.acquire() as conn:  # refuse before accepting any bytes
        await ds.get_dataset(conn, dataset_id, ctx.principal.owner_filter)
    upload_id = uuid.uuid4()
    if request.content_type == "multipart/form-data":
        method = "multipart"
        try:
            reader = await request.multipart()
            files = await uploads.receive_multipart(reader, storage, dataset_id, upload_id)
        except ValueError as exc:  # aiohttp's word for a broken multipart body
            raise BadRequest(f"malformed multipart body: {exc}") from exc
    elif request.content_type == "application/json":
        method = "signed_url"
        requested = _load(DatasetSignedUploadSchema, await read_json(request))["files"]
        files = uploads.signed_files(dataset_id, upload_id, requested)
    else:
        raise web.HTTPUnsupportedMediaType(
            text="upload takes multipart/form-data (the files) or application/json (for URLs)"
        )
    recorded = uploads.discarded_on_error(storage, files)
    async with recorded, pool.acquire() as conn, conn.transaction():
        row = await uploads.record_upload(conn, ctx, dataset_id, upload_id, method, files)
    if method == "multipart":
        body = {"upload_id": str(upload_id), "files": [uploads.file_json(f) for f in files]}
        return ok(body, status=201)
    return ok(await uploads.signed_upload_json(storage, row, files), status=201)


def _load(schema: type[Schema], body: Any) -> dict[str, Any]:
    """A JSON body checked by hand: this endpoint also takes multipart, which the validation
    middleware cannot parse."""
    try:
        data: dict[str, Any] = schema().load(body)
    except ValidationError as exc:
        raise ValidationFailed(
            "invalid request json", {"location": "json", "fields": exc.messages}
        ) from exc
    return data


@docs(
    tags=TAGS,
    summary="Make a version from an upload",
    description="Every file of the upload must be in storage (files sent by signed URL are "
    "digested now); a missing file is a 422 naming it. An upload makes one version. Profiling "
    "starts in the background: follow `profile_status` or `GET .../versions/{v}/profile`.",
    responses=error_responses(401, 404, 409, 422),
)
@match_info_schema(DatasetPathSchema, put_into="path")
@request_schema(
    DatasetVersionCreateSchema, example={"upload_id": EXAMPLE_ID, "description": "March"}
)
@response_schema(VersionResponse, 201)
async def create_version(request: web.Request) -> web.Response:
    body, dataset_id, ctx = validated(request), _path_id(request), audit_ctx(request)
    pool, storage = request.app[DB_POOL], request.app[STORAGE]
    profiler = request.app[PROFILER]  # fails before any write when profiling is not set up
    upload_id: UUID = body["upload_id"]
    async with pool.acquire() as conn:
        upload_row, rows = await ds.upload_to_version(
            conn, ctx.principal.owner_filter, dataset_id, upload_id
        )
    files = await ds.measure_files(storage, upload_row, rows)  # no transaction open meanwhile
    async with pool.acquire() as conn, conn.transaction():
        version = await ds.create_version(
            conn, ctx, dataset_id, upload_id, files, body.get("description", "")
        )
    await profiler.schedule(version["id"])
    return ok(record_json(version), status=201)


@docs(tags=TAGS, summary="List a dataset's versions", responses=error_responses(401, 404, 422))
@match_info_schema(DatasetPathSchema, put_into="path")
@querystring_schema(PageQuerySchema, put_into="query")
@response_schema(VersionListResponse, 200)
async def list_versions(request: web.Request) -> web.Response:
    q = validated(request, "query")
    async with request.app[DB_POOL].acquire() as conn:
        await ds.get_dataset(conn, _path_id(request), principal_of(request).owner_filter)
        page = await fetch_page(
            conn,
            queries["list_dataset_versions"],
            _path_id(request),
            page=q["page"],
            limit=q["limit"],
        )
    return page_answer(page)


async def _version_row(request: web.Request, query: str) -> dict[str, Any]:
    path = validated(request, "path")
    async with request.app[DB_POOL].acquire() as conn:
        await ds.get_dataset(conn, path["id"], principal_of(request).owner_filter)
        row = await conn.fetchrow(queries[query], path["id"], path["v"])
    if row is None:
        raise NotFound(f"dataset {path['id']} has no version {path['v']}")
    return record_json(row)


@docs(
    tags=TAGS,
    summary="Get a dataset version",
    description="`v` is the version number. The profile itself is at `.../profile`.",
    responses=error_responses(401, 404, 422),
)
@match_info_schema(DatasetVersionPathSchema, put_into="path")
@response_schema(VersionResponse, 200)
async def get_version(request: web.Request) -> web.Response:
    return ok(await _version_row(request, "get_dataset_version"))


@docs(
    tags=TAGS,
    summary="Get a dataset version's profile",
    description="`status` is pending or running until the background job ends; `failed` "
    "comes with an `error` naming the file that could not be read.",
    responses=error_responses(401, 404, 422),
)
@match_info_schema(DatasetVersionPathSchema, put_into="path")
@response_schema(ProfileResponse, 200)
async def get_profile(request: web.Request) -> web.Response:
    row = await _version_row(request, "get_dataset_profile")
    return ok(
        {"status": row["profile_status"], "profile": row["profile"], "error": row["profile_error"]}
    )


def routes() -> list[web.RouteDef]:
    base = "/api/v1/datasets"
    return [
        web.post(base, create_dataset),
        web.get(base, list_datasets, allow_head=False),
        web.get(base + "/{id}", get_dataset, allow_head=False),
        web.delete(base + "/{id}", delete_dataset),
        web.post(base + "/{id}/upload", upload),
        web.post(base + "/{id}/versions", create_version),
        web.get(base + "/{id}/versions", list_versions, allow_head=False),
        web.get(base + "/{id}/versions/{v}", get_version, allow_head=False),
        web.get(base + "/{id}/versions/{v}/profile", get_profile, allow_head=False),
    ]
