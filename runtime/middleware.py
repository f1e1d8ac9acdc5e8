"""Request ids, structured access logs, and errors in the contract's shape."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler

from runtime.auth import PRINCIPAL
from runtime.errors import HTTP_STATUS_CODES, ApiError, error_body

log = logging.getLogger("stepwell.access")
REQUEST_ID = web.RequestKey("request_id", str)
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")


def request_id_of(request: web.Request) -> str:
    request_id: str = request.get(REQUEST_ID, "")
    return request_id


def error_response(
    request_id: str, status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> web.Response:
    return web.json_response(
        error_body(code, message, details or {}, request_id),
        status=status,
        headers={"X-Request-ID": request_id},
    )


def _from_http_exception(exc: web.HTTPException, request_id: str) -> web.StreamResponse:
    if exc.status < 400:
        exc.headers["X-Request-ID"] = request_id
        return exc
    code = HTTP_STATUS_CODES.get(exc.status, "INTERNAL_ERROR" if exc.status >= 500 else "ERROR")
    message = exc.reason if exc.text is None or exc.text.startswith(f"{exc.status}:") else exc.text
    details: dict[str, Any] = {}
    if exc.status == 405 and isinstance(exc, web.HTTPMethodNotAllowed):
        details["allowed_methods"] = sorted(exc.allowed_methods)
        message = f"method {exc.method} is not allowed here"
    elif exc.status == 404:
        message = "no such resource"
    elif exc.status == 413:
        message = "request body is too large"
    response = error_response(request_id, exc.status, code, message, details)
    for name in ("Allow", "Retry-After", "WWW-Authenticate"):
        if name in exc.headers:
            response.headers[name] = exc.headers[name]
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: assigns the request id, renders every error, logs the request."""
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _CLIENT_REQUEST_ID.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    response: web.StreamResponse
    try:
        response = await handler(request)
        response.headers.setdefault("X-Request-ID", request_id)
    except ApiError as exc:
        response = error_response(request_id, exc.status, exc.code, exc.message, exc.details)
    except web.HTTPException as exc:
        response = _from_http_exception(exc, request_id)
    except asyncpg.DataError as exc:
        # A value that cannot be stored as given (NaN in JSON, a number out of range): the
        # request's fault, and nothing was written.
        message = f"a value cannot be stored: {exc}".split("\n", 1)[0]
        response = error_response(request_id, 422, "VALIDATION_ERROR", message)
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id})
        response = error_response(request_id, 500, "INTERNAL_ERROR", "internal error")
    _log_access(request, response, started)
    return response


def _log_access(request: web.Request, response: web.StreamResponse, started: float) -> None:
    principal = request.get(PRINCIPAL)
    log.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status,
        extra={
            "request_id": request[REQUEST_ID],
            "user": principal.user_id if principal else None,
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or a 400 saying it is not JSON."""
    try:
        return await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text="request body is not valid JSON") from exc
