"""API keys: created for the caller, shown once, stored only as a hash."""

from __future__ import annotations

from uuid import UUID

from aiohttp import web
from aiohttp_apigami import (
    docs,
    match_info_schema,
    querystring_schema,
    request_schema,
    response_schema,
)
from marshmallow import Schema, ValidationError, fields, validate, validates

from handlers.common import (
    audit_ctx,
    envelope,
    error_responses,
    list_envelope,
    paged,
    principal_of,
    record_json,
    shown_once,
    validated,
)
from runtime.audit import record_audit
from runtime.auth import new_api_key
from runtime.errors import NotFound
from runtime.keys import DB_POOL
from runtime.pagination import PageQuerySchema
from runtime.sql import queries

TAGS = ["api-keys"]


class ApiKeyCreateSchema(Schema):
    name = fields.String(
        required=True, validate=validate.Length(min=1, max=200), metadata={"example": "ci-bot"}
    )
    expires_at = fields.AwareDateTime(
        allow_none=True, metadata={"example": "2027-01-01T00:00:00+00:00"}
    )

    @validates("expires_at")
    def _future(self, value: object, **_: object) -> None:
        from datetime import UTC, datetime

        if isinstance(value, datetime) and value <= datetime.now(UTC):
            raise ValidationError("must be in the future")


class ApiKeySchema(Schema):
    id = fields.UUID()
    name = fields.String(metadata={"example": "ci-bot"})
    prefix = fields.String(metadata={"example": "sw_Zx81aQ"})
    owner_id = fields.String(metadata={"example": "user-42"})
    expires_at = fields.DateTime(allow_none=True)
    last_used_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()


class ApiKeyCreatedSchema(ApiKeySchema):
    key = fields.String(
        metadata={"description": "The key itself. Shown only in this response.", "example": "sw_…"}
    )


class ApiKeyPathSchema(Schema):
    id = fields.UUID(required=True)


@docs(
    tags=TAGS,
    summary="Create an API key",
    description="The key is in this response only; send it as `X-API-Key`.",
    responses=error_responses(401, 409, 422),
)
@request_schema(ApiKeyCreateSchema, example={"name": "ci-bot"})
@response_schema(envelope(ApiKeyCreatedSchema, "ApiKeyCreatedResponse"), 201)
async def create_api_key(request: web.Request) -> web.Response:
    body = validated(request)
    principal = principal_of(request)
    key, prefix, key_hash = new_api_key()
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            queries["insert_api_key"],
            principal.user_id,
            principal.role,
            body["name"],
            prefix,
            key_hash,
            body.get("expires_at"),
        )
        assert row is not None  # noqa: S101
        await record_audit(
            conn,
            audit_ctx(request),
            action="create",
            entity_type="api_key",
            entity_id=str(row["id"]),
            owner_id=principal.user_id,
            changes={"name": body["name"], "prefix": prefix},
        )
    return shown_once({**record_json(row), "key": key})


@docs(tags=TAGS, summary="List your API keys", responses=error_responses(401, 422))
@querystring_schema(PageQuerySchema, put_into="query")
@response_schema(list_envelope(ApiKeySchema, "ApiKeyListResponse"), 200)
async def list_api_keys(request: web.Request) -> web.Response:
    return await paged(request, queries["list_api_keys"])


@docs(
    tags=TAGS,
    summary="Revoke an API key",
    responses={204: {"description": "Revoked"}, **error_responses(401, 404, 422)},
)
@match_info_schema(ApiKeyPathSchema, put_into="path")
async def delete_api_key(request: web.Request) -> web.Response:
    key_id: UUID = validated(request, "path")["id"]
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            queries["delete_api_key"], key_id, principal_of(request).owner_filter
        )
        if row is None:
            raise NotFound(f"API key {key_id} not found")
        await record_audit(
            conn,
            audit_ctx(request),
            action="delete",
            entity_type="api_key",
            entity_id=str(key_id),
            owner_id=row["owner_id"],
            changes={"name": row["name"], "prefix": row["prefix"]},
        )
    return web.Response(status=204)


def routes() -> list[web.RouteDef]:
    base = "/api/v1/api-keys"
    return [
        web.post(base, create_api_key),
        web.get(base, list_api_keys, allow_head=False),
        web.delete(base + "/{id}", delete_api_key),
    ]
