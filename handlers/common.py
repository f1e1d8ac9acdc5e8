"""What every handler needs: the caller, JSON envelopes, and schemas for the docs."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web
from marshmallow import Schema, fields

from runtime.audit import AuditContext
from runtime.auth import PRINCIPAL, Principal
from runtime.errors import ApiError, ValidationFailed
from runtime.json_text import response_json
from runtime.keys import DB_POOL
from runtime.middleware import request_id_of
from runtime.pagination import Page, PaginationSchema, fetch_page


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def audit_ctx(request: web.Request) -> AuditContext:
    return AuditContext(principal_of(request), request_id_of(request))


def validated(request: web.Request, key: str = "data") -> dict[str, Any]:
    """Data the validation middleware parsed for this handler's schema."""
    data: dict[str, Any] = request[key]
    return data


def jsonable(value: Any) -> Any:
    """Database values as the API shows them: ISO timestamps, UUIDs as strings."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def record_json(
    row: asyncpg.Record | Mapping[str, Any], skip: tuple[str, ...] = ("total",)
) -> dict[str, Any]:
    return {k: jsonable(v) for k, v in row.items() if k not in skip}


async def paged(
    request: web.Request,
    query: str,
    *filters: str,
    render: Callable[[Any], dict[str, Any]] = record_json,
) -> web.Response:
    """One page of a list query: the caller's rows (admins: all), filtered by the named query
    parameters, in the contract's list shape."""
    q = validated(request, "query")
    args = [principal_of(request).owner_filter, *(q.get(name) for name in filters)]
    async with request.app[DB_POOL].acquire() as conn:
        page = await fetch_page(conn, query, *args, page=q["page"], limit=q["limit"])
    return page_answer(page, render)


def page_answer(page: Page, render: Callable[[Any], dict[str, Any]] = record_json) -> web.Response:
    """One page of rows in the contract's list shape."""
    return web.json_response(page.body([render(r) for r in page.rows]), dumps=response_json)


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response({"data": data}, status=status, dumps=response_json)


def shown_once(data: Any, status: int = 201) -> web.Response:
    """A response holding a secret: no cache or idempotency record may keep a copy."""
    response = ok(data, status)
    response.headers["Cache-Control"] = "no-store"
    return response


def envelope(schema: type[Schema], name: str) -> type[Schema]:
    """`{"data": <schema>}` for the docs."""
    return Schema.from_dict({"data": fields.Nested(schema, required=True)}, name=name)


def list_envelope(schema: type[Schema], name: str) -> type[Schema]:
    """`{"data": [<schema>], "pagination": {...}}` for the docs."""
    return Schema.from_dict(
        {
            "data": fields.List(fields.Nested(schema), required=True),
            "pagination": fields.Nested(PaginationSchema, required=True),
        },
        name=name,
    )


class ErrorDetailSchema(Schema):
    code = fields.String(required=True, metadata={"example": "VALIDATION_ERROR"})
    message = fields.String(required=True, metadata={"example": "the workflow is not valid"})
    details = fields.Dict(metadata={"example": {"fields": {"name": ["Missing data."]}}})
    request_id = fields.String(required=True, metadata={"example": "3f2a9c1e0b7d4e65"})


class ErrorSchema(Schema):
    error = fields.Nested(ErrorDetailSchema, required=True)


def error_responses(*statuses: int, ok: str | None = None) -> dict[int, dict[str, Any]]:
    """OpenAPI entries for the error statuses an endpoint may answer with (and 200 if given)."""
    text = {
        400: "Body is not readable JSON",
        401: "Missing or invalid credentials",
        403: "Not allowed for this user",
        404: "Not found (or owned by someone else)",
        409: "Conflict with the resource's state or an in-flight idempotent request",
        415: "Unsupported content type",
        422: "Validation error; details list every problem",
    }
    entries: dict[int, dict[str, Any]] = {} if ok is None else {200: {"description": ok}}
    for status in statuses:
        entries[status] = {"description": text.get(status, ApiError.__doc__), "schema": ErrorSchema}
    return entries


def validation_error_callback(
    error: Any, req: web.Request, schema: Any, *args: Any, **kwargs: Any
) -> None:
    """webargs error hook: raise the contract's 422 with the fields and where they were."""

    messages = error.messages if isinstance(error.messages, dict) else {"_": error.messages}
    location = next(iter(messages), "json")
    raise ValidationFailed(
        f"invalid request {location}",
        {"location": location, "fields": messages.get(location, messages)},
    )
