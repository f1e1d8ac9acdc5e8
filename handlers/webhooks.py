"""Webhook triggers: start runs when another system calls in, and manage their secrets.

With a secret set, the signature is the only credential (machines call in; a token decides
nothing). Without one, the caller must be signed in and own the workflow, as for `/run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp import web
from aiohttp_apigami import docs, match_info_schema, response_schema
from marshmallow import Schema, fields

from actors.runs import start_run
from handlers.common import (
    ErrorSchema,
    audit_ctx,
    envelope,
    error_responses,
    ok,
    principal_of,
    record_json,
    shown_once,
    validated,
)
from handlers.runs import RunResponse
from handlers.workflows import WorkflowPathSchema
from runtime import idempotency
from runtime.audit import AuditContext, record_audit
from runtime.auth import PRINCIPAL, Principal
from runtime.db import Conn
from runtime.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from runtime.json_text import response_json
from runtime.keys import DB_POOL, DISPATCHER
from runtime.middleware import read_json, request_id_of
from runtime.ratelimit import retry_after_header, webhook_limiter
from runtime.signatures import SIGNATURE_HEADER, new_webhook_secret, verify_signature
from runtime.sql import queries

TAGS = ["triggers"]
# A sender's own delivery ids count as idempotency keys, so its retries need no extra header.
DELIVERY_HEADERS = (idempotency.HEADER, "X-Delivery-ID", "X-GitHub-Delivery")
WEBHOOK_USER = "webhook"
BODY = {"day": "2026-11-22"}
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


class WebhookPathSchema(Schema):
    workflow_id = fields.UUID(required=True)


class WebhookSecretSchema(Schema):
    secret = fields.String(
        metadata={"description": "Shown only in this response.", "example": "whsec_3q2…"}
    )
    workflow_id = fields.UUID(metadata={"example": "0b9f6a2e-5d1c-4f7e-9a43-2c8e1d7b6f10"})
    created_at = fields.DateTime(metadata={"example": "2026-11-22T02:00:00+00:00"})


@dataclass(frozen=True, slots=True)
class _Caller:
    """Who a webhook run is started for, after the signature or the token was checked."""

    owner: str | None
    created_by: str
    audit: AuditContext


class _DeliveryTaken(Exception):
    """A concurrent copy of this delivery recorded its run first; raised to roll ours back."""


def _check_rate(request: web.Request, workflow_id: UUID) -> None:
    allowed, retry_after = webhook_limiter(request.app).allow(workflow_id)
    if not allowed:
        raise web.HTTPTooManyRequests(
            text=f"too many webhook calls for workflow {workflow_id}; retry in {retry_after:.1f} s",
            headers={"Retry-After": retry_after_header(retry_after)},
        )


def _delivery_id(request: web.Request) -> str | None:
    name = next((n for n in DELIVERY_HEADERS if n in request.headers), None)
    if name is None:
        return None
    value = request.headers[name]
    if not 0 < len(value) <= idempotency.MAX_KEY_LENGTH or not value.isprintable():
        limit = idempotency.MAX_KEY_LENGTH
        raise ValidationFailed(f"{name} must be 1 to {limit} printable characters")
    return value


async def _authorise(request: web.Request, conn: Conn, workflow_id: UUID, raw: bytes) -> _Caller:
    target = await conn.fetchrow(queries["get_webhook_target"], workflow_id)
    if target is None:
        raise NotFound(f"workflow {workflow_id} not found")
    if target["secret"] is not None:
        verify_signature(target["secret"], request.headers.get(SIGNATURE_HEADER), raw)
        machine = Principal(user_id=WEBHOOK_USER, via="webhook_signature")
        audit = AuditContext(machine, request_id_of(request))
        return _Caller(owner=target["owner_id"], created_by=WEBHOOK_USER, audit=audit)
    principal = request.get(PRINCIPAL)
    if principal is None:
        raise Unauthorized(
            "authentication required: this workflow has no webhook secret, so send "
            "'Authorization: Bearer <token>' (or set a secret and sign the request)"
        )
    # Checked here as well as in start_run so another user cannot read a replayed delivery.
    if principal.owner_filter not in (None, target["owner_id"]):
        raise NotFound(f"workflow {workflow_id} not found")
    return _Caller(principal.owner_filter, principal.user_id, audit_ctx(request))


async def _run_input(request: web.Request, raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    body = await read_json(request)  # reuses the bytes already read for the signature
    if not isinstance(body, dict):
        kind = "null" if body is None else _JSON_TYPES.get(type(body), "value")
        raise ValidationFailed(
            f"the webhook body must be a JSON object (it becomes the run's input), not {kind}",
            {"type": kind},
        )
    return body


async def _start(
    conn: Conn, workflow_id: UUID, caller: _Caller, run_input: dict[str, Any], delivery: str | None
) -> asyncpg.Record:
    async with conn.transaction():
        run = await start_run(
            conn,
            workflow_id,
            owner=caller.owner,
            created_by=caller.created_by,
            trigger_type="webhook",
            run_input=run_input,
            audit=caller.audit,
        )
        # Two copies of a delivery can both miss the earlier lookup; the primary key lets one
        # win, and the loser's run disappears with its rolled-back transaction.
        if delivery is not None and not await conn.fetchval(
            queries["insert_webhook_delivery"], workflow_id, delivery, run["id"]
        ):
            raise _DeliveryTaken
    return run


def _replayed(run: asyncpg.Record) -> web.Response:
    return web.json_response(
        {"data": record_json(run)},
        headers={idempotency.REPLAYED_HEADER: "true"},
        dumps=response_json,
    )


def _header_doc(name: str, description: str) -> dict[str, Any]:
    return {"in": "header", "name": name, "schema": {"type": "string"}, "description": description}


_DELIVERY_DOC = "Delivery id; a repeat returns the first run. The first of these headers counts."
_HEADER_DOCS = [
    _header_doc(
        SIGNATURE_HEADER,
        "Required when the workflow has a webhook secret: `t=<unix seconds>,v1=<hex HMAC-SHA256 "
        "of '<t>.<raw body>'>`, at most 5 minutes old. `v1` may repeat.",
    ),
    *(_header_doc(name, _DELIVERY_DOC) for name in DELIVERY_HEADERS),
]


@docs(
    tags=TAGS,
    summary="Start a run from a webhook",
    description="The JSON object body is the run's input, checked against the workflow's "
    f"input_schema. With a webhook secret set, `{SIGNATURE_HEADER}` is the only credential "
    "needed; without one, the caller must be signed in and own the workflow. A repeated "
    "delivery id answers 200 with the first run and `Idempotent-Replayed: true`. Rate limited "
    "per workflow (429 with `Retry-After`).",
    # Anonymous (signed) calls, or signed-in ones for workflows without a secret.
    security=[{}, {"bearerAuth": []}, {"apiKeyAuth": []}],
    parameters=_HEADER_DOCS,
    requestBody={"content": {"application/json": {"schema": {"type": "object"}, "example": BODY}}},
    responses={
        200: {
            "description": "A repeated delivery: the run its first copy started",
            "schema": RunResponse,
            "headers": {idempotency.REPLAYED_HEADER: {"schema": {"type": "string"}}},
        },
        **error_responses(400, 401, 404, 409, 422),
        429: {
            "description": "Too many calls for this workflow; wait `Retry-After` seconds",
            "schema": ErrorSchema,
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
    },
)
@match_info_schema(WebhookPathSchema, put_into="path")
@response_schema(RunResponse, 202, description="A new run, pending until its owner picks it up")
async def trigger(request: web.Request) -> web.Response:
    workflow_id: UUID = validated(request, "path")["workflow_id"]
    _check_rate(request, workflow_id)  # before any database work: floods stop here
    delivery = _delivery_id(request)
    raw = await request.read()
    async with request.app[DB_POOL].acquire() as conn:
        caller = await _authorise(request, conn, workflow_id, raw)
        run_input = await _run_input(request, raw)
        lookup = (queries["get_webhook_delivery_run"], workflow_id, delivery)
        if delivery is not None and (first := await conn.fetchrow(*lookup)) is not None:
            return _replayed(first)
        try:
            run = await _start(conn, workflow_id, caller, run_input, delivery)
        except _DeliveryTaken:
            first = await conn.fetchrow(*lookup)
            if first is None:  # the winner's run was deleted in the meantime
                message = f"delivery {delivery!r} changed during this request; retry it"
                raise Conflict(message) from None
            return _replayed(first)
    await request.app[DISPATCHER].wake(run["id"])
    return ok(record_json(run), status=202)


async def _own_workflow(request: web.Request, conn: Conn) -> asyncpg.Record:
    """The path's workflow, locked so changes to its secret queue up; 404 unless yours."""
    workflow_id: UUID = validated(request, "path")["id"]
    owner = principal_of(request).owner_filter
    workflow = await conn.fetchrow(queries["lock_workflow"], workflow_id, owner)
    if workflow is None:
        raise NotFound(f"workflow {workflow_id} not found")
    return workflow


async def _audit(
    conn: Conn, request: web.Request, workflow: asyncpg.Record, action: str, **changes: Any
) -> None:
    # Never the secret itself: whoever may read the audit log must not be able to sign.
    await record_audit(
        conn,
        audit_ctx(request),
        action=f"webhook_secret.{action}",
        entity_type="workflow",
        entity_id=str(workflow["id"]),
        owner_id=workflow["owner_id"],
        changes=changes,
    )


@docs(
    tags=TAGS,
    summary="Create or rotate a workflow's webhook secret",
    description="The secret is in this response only. Rotating replaces the old secret at "
    "once: requests signed with it are refused from then on.",
    responses=error_responses(401, 404, 422),
)
@match_info_schema(WorkflowPathSchema, put_into="path")
@response_schema(
    envelope(WebhookSecretSchema, "WebhookSecretResponse"),
    201,
    description="The new secret; it is not shown again",
)
async def rotate_secret(request: web.Request) -> web.Response:
    secret = new_webhook_secret()
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        workflow = await _own_workflow(request, conn)
        row = await conn.fetchrow(
            queries["upsert_webhook_secret"], workflow["id"], secret, principal_of(request).user_id
        )
        assert row is not None  # noqa: S101 - an upsert always returns its row
        await _audit(conn, request, workflow, "rotate", replaced=row["replaced"])
    return shown_once({"secret": secret, **record_json(row, skip=("replaced",))})


@docs(
    tags=TAGS,
    summary="Remove a workflow's webhook secret",
    description="Webhook calls then need a signed-in caller who owns the workflow.",
    responses={204: {"description": "Removed"}, **error_responses(401, 404, 422)},
)
@match_info_schema(WorkflowPathSchema, put_into="path")
async def delete_secret(request: web.Request) -> web.Response:
    async with request.app[DB_POOL].acquire() as conn, conn.transaction():
        workflow = await _own_workflow(request, conn)
        if await conn.fetchval(queries["delete_webhook_secret"], workflow["id"]) is None:
            raise NotFound(f"workflow {workflow['id']} has no webhook secret")
        await _audit(conn, request, workflow, "delete")
    return web.Response(status=204)


def routes() -> list[web.RouteDef]:
    path = "/api/v1/workflows/{id}/webhook-secret"
    return [
        web.post("/api/v1/triggers/webhook/{workflow_id}", trigger),
        web.post(path, rotate_secret),
        web.delete(path, delete_secret),
    ]
