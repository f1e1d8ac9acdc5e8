"""`X-Idempotency-Key` on creating POSTs.

Same key and same request replays the first response; same key with another request is a 422;
the same key while the first request is still running is a 409. Keys belong to one user and
are kept 24 hours. Only successful responses are stored: a failed attempt releases its key so
the client can retry it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from runtime.auth import PRINCIPAL
from runtime.db import Conn
from runtime.errors import Conflict, ValidationFailed
from runtime.keys import DB_POOL
from runtime.sql import queries

log = logging.getLogger(__name__)
HEADER = "X-Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
CLEANUP_INTERVAL_S = 3600.0
_SECRET_SHOWN_ONCE = {
    "error": {
        "code": "CONFLICT",
        "message": "this request already succeeded; its response held a secret shown only once",
        "details": {},
        "request_id": "",
    }
}


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(body)
    return digest.hexdigest()


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Claim the key before the handler runs; store or release it after."""
    key = request.headers.get(HEADER)
    principal = request.get(PRINCIPAL)
    if key is None or request.method != "POST" or principal is None:
        return await handler(request)
    if request.content_type.startswith("multipart/"):
        # A streamed upload cannot be read twice to fingerprint it; each one creates its own
        # upload, and nothing else happens until a version is made from it (which is keyed).
        return await handler(request)
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ValidationFailed(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters")
    fingerprint = request_fingerprint(request.method, request.path_qs, await request.read())
    pool = request.app[DB_POOL]
    owner = principal.user_id
    async with pool.acquire() as conn:
        claimed = await conn.fetchrow(queries["claim_idempotency_key"], owner, key, fingerprint)
        if claimed is None:
            return await _replay(conn, owner, key, fingerprint)
    try:
        response = await handler(request)
    except BaseException:
        await pool.execute(queries["release_idempotency_key"], owner, key)
        raise
    if 200 <= response.status < 300 and isinstance(response, web.Response):
        status, body = response.status, response.body if isinstance(response.body, bytes) else b""
        if "no-store" in response.headers.get("Cache-Control", ""):
            # The response holds a secret shown once (an API key, a webhook secret): keep no
            # copy. A replay learns the request succeeded, not the secret.
            status, body = 409, json.dumps(_SECRET_SHOWN_ONCE).encode()
        await pool.execute(
            queries["complete_idempotency_key"],
            owner,
            key,
            status,
            body.decode(),
            response.content_type,
        )
    else:
        await pool.execute(queries["release_idempotency_key"], owner, key)
    return response


async def _replay(conn: Conn, owner: str, key: str, fingerprint: str) -> web.Response:
    row = await conn.fetchrow(queries["get_idempotency_key"], owner, key)
    if row is None:  # released between our claim attempt and this read
        raise Conflict(f"a request with {HEADER} {key!r} just finished; retry it")
    if row["request_hash"] != fingerprint:
        raise ValidationFailed(
            f"{HEADER} {key!r} was already used for a different request",
            {"idempotency_key": key},
        )
    if row["state"] != "done":
        raise Conflict(f"a request with {HEADER} {key!r} is still in progress")
    return web.Response(
        status=row["response_status"],
        text=row["response_body"],
        content_type=row["content_type"],
        headers={REPLAYED_HEADER: "true"},
    )


async def idempotency_cleanup_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: deletes keys older than 24 hours, hourly."""

    async def sweep() -> None:
        while True:
            try:
                status = await app[DB_POOL].execute(queries["delete_expired_idempotency_keys"])
                log.debug("idempotency sweep: %s", status)
                # Webhook delivery ids are the senders' idempotency keys: same retention.
                await app[DB_POOL].execute(queries["delete_expired_webhook_deliveries"])
            except Exception:
                log.exception("idempotency sweep failed")
            await asyncio.sleep(CLEANUP_INTERVAL_S)

    task = asyncio.create_task(sweep())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
