"""The audit log, filtered by entity, user and time range."""

from __future__ import annotations

from aiohttp import web
from aiohttp_apigami import docs, querystring_schema, response_schema
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from handlers.common import error_responses, list_envelope, paged
from runtime.pagination import PageQuerySchema
from runtime.sql import queries


class AuditQuerySchema(PageQuerySchema):
    entity_type = fields.String(
        validate=validate.Length(min=1, max=100), metadata={"example": "workflow"}
    )
    entity_id = fields.String(validate=validate.Length(min=1, max=200))
    user_id = fields.String(validate=validate.Length(min=1, max=200))
    since = fields.AwareDateTime(metadata={"description": "Entries at or after (ISO 8601)"})
    until = fields.AwareDateTime(metadata={"description": "Entries before (ISO 8601)"})

    @validates_schema
    def _range(self, data: dict[str, object], **_: object) -> None:
        since, until = data.get("since"), data.get("until")
        if since is not None and until is not None and since >= until:  # type: ignore[operator]
            raise ValidationError("since must be before until", "until")


class AuditEntrySchema(Schema):
    id = fields.Integer()
    at = fields.DateTime()
    user_id = fields.String(metadata={"example": "user-42"})
    owner_id = fields.String(metadata={"example": "user-42"})
    action = fields.String(metadata={"example": "update"})
    entity_type = fields.String(metadata={"example": "workflow"})
    entity_id = fields.String()
    changes = fields.Dict(metadata={"example": {"description": {"from": "v1", "to": "v2"}}})
    request_id = fields.String(allow_none=True)


@docs(
    tags=["audit"],
    summary="Audit log entries for resources you own (admins: all)",
    responses=error_responses(401, 422),
)
@querystring_schema(AuditQuerySchema, put_into="query")
@response_schema(list_envelope(AuditEntrySchema, "AuditLogListResponse"), 200)
async def list_audit_logs(request: web.Request) -> web.Response:
    return await paged(
        request, queries["list_audit_logs"], "entity_type", "entity_id", "user_id", "since", "until"
    )


def routes() -> list[web.RouteDef]:
    return [web.get("/api/v1/audit-logs", list_audit_logs, allow_head=False)]
