"""Workflows: create, list, read, edit (PUT or JSON Patch), publish, validate, duplicate."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import jsonpatch
import jsonpointer
from aiohttp import web
from aiohttp_apigami import (
    docs,
    match_info_schema,
    querystring_schema,
    request_schema,
    response_schema,
)
from marshmallow import Schema, ValidationError, fields, validate

from actors import workflows as wf
from actors.definition import validate_definition
from handlers.common import (
    audit_ctx,
    envelope,
    error_responses,
    list_envelope,
    ok,
    page_answer,
    paged,
    principal_of,
    record_json,
    validated,
)
from runtime.errors import Conflict, NotFound, ValidationFailed
from runtime.keys import DB_POOL
from runtime.middleware import read_json
from runtime.pagination import PageQuerySchema, fetch_page
from runtime.sql import queries

WORKFLOW_TYPES = ("training", "prediction", "data-processing", "general")
STATUSES = tuple(s.value for s in wf.WorkflowStatus)
JSON_PATCH = "application/json-patch+json"

EXAMPLE_DEFINITION = {
    "nodes": [
        {"id": "fetch", "type": "http", "data": {"url": "https://example.com/data.json"}},
        {
            "id": "check",
            "type": "condition",
            "data": {"expression": "steps.fetch.output.status == `200`"},
        },
        {
            "id": "shape",
            "type": "transform",
            "data": {"output": {"rows": "{{ steps.fetch.output.body }}"}},
        },
    ],
    "edges": [
        {"source": "fetch", "target": "check"},
        {"source": "check", "target": "shape", "condition": "true"},
    ],
}


class WorkflowFieldsSchema(Schema):
    """Editable fields of a workflow (all optional: used for PUT and to check JSON Patches)."""

    name = fields.String(
        validate=validate.Length(min=1, max=200), metadata={"example": "nightly-retrain"}
    )
    description = fields.String(
        validate=validate.Length(max=10_000), metadata={"example": "Retrain on yesterday's data"}
    )
    workflow_type = fields.String(
        validate=validate.OneOf(WORKFLOW_TYPES), metadata={"example": "training"}
    )
    definition = fields.Dict(metadata={"example": EXAMPLE_DEFINITION})
    input_schema = fields.Dict(
        allow_none=True,
        metadata={"example": {"type": "object", "properties": {"day": {"type": "string"}}}},
    )


class WorkflowCreateSchema(WorkflowFieldsSchema):
    name = fields.String(
        required=True,
        validate=validate.Length(min=1, max=200),
        metadata={"example": "nightly-retrain"},
    )


class WorkflowSchema(WorkflowCreateSchema):
    id = fields.UUID(metadata={"example": "6f1c3c8e-8a7b-4c1e-9d2a-0a4c4f3b2e11"})
    family_id = fields.UUID()
    status = fields.String(validate=validate.OneOf(STATUSES), metadata={"example": "draft"})
    version = fields.Integer(metadata={"example": 1})
    owner_id = fields.String(metadata={"example": "user-42"})
    created_by = fields.String(metadata={"example": "user-42"})
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    published_at = fields.DateTime(allow_none=True)
    archived_at = fields.DateTime(allow_none=True)


class WorkflowListQuerySchema(PageQuerySchema):
    status = fields.String(validate=validate.OneOf(STATUSES))
    name = fields.String(validate=validate.Length(min=1, max=200))
    workflow_type = fields.String(validate=validate.OneOf(WORKFLOW_TYPES))


class WorkflowPathSchema(Schema):
    id = fields.UUID(required=True)


class ValidateBodySchema(Schema):
    definition = fields.Dict(metadata={"description": "Validate this instead of the stored one"})


class DefinitionErrorSchema(Schema):
    path = fields.String(metadata={"example": "/edges/0/target"})
    code = fields.String(metadata={"example": "unknown_edge_target"})
    message = fields.String(metadata={"example": "edge 0 points to unknown node 'trian'"})


class ValidationResultSchema(Schema):
    valid = fields.Boolean(required=True)
    errors = fields.List(fields.Nested(DefinitionErrorSchema), required=True)


WorkflowResponse = envelope(WorkflowSchema, "WorkflowResponse")
WorkflowListResponse = list_envelope(WorkflowSchema, "WorkflowListResponse")
ValidationResponse = envelope(ValidationResultSchema, "ValidationResponse")
TAGS = ["workflows"]


def _path_id(request: web.Request) -> UUID:
    workflow_id: UUID = validated(request, "path")["id"]
    return workflow_id


@docs(tags=TAGS, summary="Create a draft workflow", responses=error_responses(401, 409, 422))
@request_schema(
    WorkflowCreateSchema,
    example={
        "name": "nightly-retrain",
        "workflow_type": "training",
        "definition": EXAMPLE_DEFINITION,
    },
)
@response_schema(WorkflowResponse, 201)
async def create_workflow(request: web.Request) -> web.Response:
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        row = await wf.create_workflow(conn, audit_ctx(request), validated(request))
    return ok(record_json(row), status=201)


@docs(tags=TAGS, summary="List workflows", responses=error_responses(401, 422))
@querystring_schema(WorkflowListQuerySchema, put_into="query")
@response_schema(WorkflowListResponse, 200)
async def list_workflows(request: web.Request) -> web.Response:
    return await paged(request, queries["list_workflows"], "status", "name", "workflow_type")


@docs(tags=TAGS, summary="Get a workflow", responses=error_responses(401, 404, 422))
@match_info_schema(WorkflowPathSchema, put_into="path")
@response_schema(WorkflowResponse, 200)
async def get_workflow(request: web.Request) -> web.Response:
    row = await request.app[DB_POOL].fetchrow(
        queries["get_workflow"], _path_id(request), principal_of(request).owner_filter
    )
    if row is None:
        raise NotFound(f"workflow {_path_id(request)} not found")
    return ok(record_json(row))


@docs(
    tags=TAGS,
    summary="Update a draft workflow",
    description="Replaces the fields given. Published and archived workflows answer 409.",
    responses=error_responses(401, 404, 409, 422),
)
@match_info_schema(WorkflowPathSchema, put_into="path")
@request_schema(WorkflowFieldsSchema, example={"description": "Retrain nightly at 02:00"})
@response_schema(WorkflowResponse, 200)
async def update_workflow(request: web.Request) -> web.Response:
    fields_ = validated(request)
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        row = await wf.update_workflow(
            conn, audit_ctx(request), _path_id(request), lambda current: fields_
        )
    return ok(record_json(row))


def _apply_patch(ops: Any) -> Any:
    """A function that applies JSON Patch `ops` to the editable fields and checks the result."""
    if not isinstance(ops, list):
        raise ValidationFailed("a JSON Patch is an array of operations")
    try:
        patch = jsonpatch.JsonPatch(ops)
    except (jsonpatch.InvalidJsonPatch, TypeError, KeyError) as exc:
        raise ValidationFailed(f"invalid JSON Patch: {exc}") from exc

    def change(current: dict[str, Any]) -> dict[str, Any]:
        try:
            patched = patch.apply(current)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise Conflict(f"JSON Patch test failed: {exc}") from exc
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise ValidationFailed(f"JSON Patch cannot be applied: {exc}") from exc
        if not isinstance(patched, dict):
            raise ValidationFailed("JSON Patch must leave the workflow an object")
        try:
            checked: dict[str, Any] = WorkflowCreateSchema().load(patched)
        except ValidationError as exc:
            raise ValidationFailed(
                "the patched workflow is not valid", {"fields": exc.messages}
            ) from exc
        return checked

    return change


@docs(
    tags=TAGS,
    summary="Edit a draft workflow with JSON Patch (RFC 6902)",
    description=f"Send `Content-Type: {JSON_PATCH}`. The patched workflow is validated before "
    "it is saved; a failing `test` operation answers 409.",
    requestBody={
        "content": {
            JSON_PATCH: {
                "schema": {"type": "array", "items": {"type": "object"}},
                "example": [{"op": "replace", "path": "/description", "value": "v2"}],
            }
        }
    },
    responses=error_responses(400, 401, 404, 409, 415, 422),
)
@match_info_schema(WorkflowPathSchema, put_into="path")
@response_schema(WorkflowResponse, 200)
async def patch_workflow(request: web.Request) -> web.Response:
    if request.content_type != JSON_PATCH:
        raise web.HTTPUnsupportedMediaType(text=f"PATCH takes Content-Type: {JSON_PATCH}")
    change = _apply_patch(await read_json(request))
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        row = await wf.update_workflow(conn, audit_ctx(request), _path_id(request), change)
    return ok(record_json(row))


@docs(
    tags=TAGS,
    summary="Delete a draft, or archive a published workflow",
    description="A draft is deleted (204). A published workflow is archived (200) and can no "
    "longer run.",
    responses={204: {"description": "Draft deleted"}, **error_responses(401, 404, 422)},
)
@match_info_schema(WorkflowPathSchema, put_into="path")
@response_schema(WorkflowResponse, 200)
async def delete_workflow(request: web.Request) -> web.Response:
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        row = await wf.delete_workflow(conn, audit_ctx(request), _path_id(request))
    return web.Response(status=204) if row is None else ok(record_json(row))


@docs(
    tags=TAGS,
    summary="Publish a draft",
    description="Validates the definition first; 422 lists every error in `details.errors`.",
    responses=error_responses(401, 404, 409, 422),
)
@match_info_schema(WorkflowPathSchema, put_into="path")
@response_schema(WorkflowResponse, 200)
async def publish_workflow(request: web.Request) -> web.Response:
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        row = await wf.publish_workflow(conn, audit_ctx(request), _path_id(request))
    return ok(record_json(row))


@docs(
    tags=TAGS,
    summary="Validate a workflow's definition",
    description="Checks the stored definition, or the one in the body, without saving.",
    responses=error_responses(401, 404, 422),
)
@match_info_schema(WorkflowPathSchema, put_into="path")
@request_schema(ValidateBodySchema)
@response_schema(ValidationResponse, 200)
async def validate_workflow(request: web.Request) -> web.Response:
    row = await request.app[DB_POOL].fetchrow(
        queries["get_workflow"], _path_id(request), principal_of(request).owner_filter
    )
    if row is None:
        raise NotFound(f"workflow {_path_id(request)} not found")
    definition = validated(request).get("definition", row["definition"])
    errors = [e.as_dict() for e in validate_definition(definition)]
    return ok({"valid": not errors, "errors": errors})


@docs(
    tags=TAGS,
    summary="Duplicate a workflow as a new draft version",
    description="The copy joins the same family with the next version number.",
    responses=error_responses(401, 404, 409, 422),
)
@match_info_schema(WorkflowPathSchema, put_into="path")
@response_schema(WorkflowResponse, 201)
async def duplicate_workflow(request: web.Request) -> web.Response:
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        row = await wf.duplicate_workflow(conn, audit_ctx(request), _path_id(request))
    return ok(record_json(row), status=201)


@docs(
    tags=TAGS,
    summary="All versions of a workflow's family",
    responses=error_responses(401, 404, 422),
)
@match_info_schema(WorkflowPathSchema, put_into="path")
@querystring_schema(PageQuerySchema, put_into="query")
@response_schema(WorkflowListResponse, 200)
async def list_versions(request: web.Request) -> web.Response:
    owner = principal_of(request).owner_filter
    q = validated(request, "query")
    async with request.app[DB_POOL].acquire() as conn:
        row = await conn.fetchrow(queries["get_workflow"], _path_id(request), owner)
        if row is None:
            raise NotFound(f"workflow {_path_id(request)} not found")
        page = await fetch_page(
            conn,
            queries["list_workflow_versions"],
            row["family_id"],
            owner,
            page=q["page"],
            limit=q["limit"],
        )
    return page_answer(page)


def routes() -> list[web.RouteDef]:
    base = "/api/v1/workflows"
    return [
        web.post(base, create_workflow),
        web.get(base, list_workflows, allow_head=False),
        web.get(base + "/{id}", get_workflow, allow_head=False),
        web.put(base + "/{id}", update_workflow),
        web.patch(base + "/{id}", patch_workflow),
        web.delete(base + "/{id}", delete_workflow),
        web.post(base + "/{id}/publish", publish_workflow),
        web.post(base + "/{id}/validate", validate_workflow),
        web.post(base + "/{id}/duplicate", duplicate_workflow),
        web.get(base + "/{id}/versions", list_versions, allow_head=False),
    ]
