"""Direct uploads and downloads on the local storage backend, authorised by signed URLs.

On GCS, clients move bytes with V4 signed URLs straight to Google. On local storage Stepwell
plays Google's part at `/storage/<key>?method=&expires=&signature=`, so clients follow one flow
everywhere: ask the API for a signed URL, then PUT or GET the bytes on it. The signature is the
authorisation (no bearer token). Bodies stream in both directions, far beyond the 2 MB JSON
limit: `client_max_size` only bounds `request.read()`, which these handlers never call.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp_apigami import docs
from marshmallow import Schema, fields

from handlers.common import ErrorSchema, envelope, ok
from runtime.errors import ApiError, BadRequest, Forbidden, NotFound, ValidationFailed
from runtime.keys import STORAGE
from runtime.middleware import error_response
from runtime.storage.base import CHUNK_BYTES, StorageError
from runtime.storage.local import LocalStorage, open_in_thread

SIGNED_QUERY = ("method", "expires", "signature")
OCTET_STREAM = "application/octet-stream"

_SIGNED_PARAMETERS: list[dict[str, Any]] = [
    {"in": "query", "name": name, "required": True, "schema": {"type": "string"}}
    for name in SIGNED_QUERY
]
_SIGNED_ERRORS: dict[int, dict[str, Any]] = {
    403: {
        "description": "Signature missing, wrong, for another method, or expired",
        "schema": ErrorSchema,
    },
    404: {
        "description": "No such object, or storage is not local (use the URL the API gave)",
        "schema": ErrorSchema,
    },
}


class StoredSchema(Schema):
    key = fields.String(required=True, metadata={"example": "datasets/3f2a/train.csv"})
    size_bytes = fields.Integer(required=True, metadata={"example": 209715200})
    sha256 = fields.String(required=True, metadata={"example": "9f86d081884c7d65..."})


def _local_storage(request: web.Request) -> LocalStorage:
    storage = request.app[STORAGE]
    if not isinstance(storage, LocalStorage):
        # On GCS, signed URLs point at Google; nothing is served here.
        raise NotFound("storage is not local: signed URLs point at the storage service")
    return storage


def _authorise(request: web.Request) -> tuple[LocalStorage, str]:
    """The backend and the key, if the URL carries a valid signature for this method."""
    storage = _local_storage(request)
    key = request.match_info["key"]
    method, expires, signature = (request.query.get(name, "") for name in SIGNED_QUERY)
    if not (method and expires and signature):
        raise Forbidden("a signed URL needs method, expires and signature")
    if method != request.method:
        raise Forbidden(f"the URL was signed for {method}, not {request.method}")
    try:
        storage.check_signature(key, method, expires, signature)
    except StorageError as exc:
        raise Forbidden(str(exc)) from exc
    return storage, key


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue`: refuse a bad URL before the client sends its body.

    aiohttp calls this before any middleware, so it renders its own errors; otherwise it
    does what aiohttp's default does.
    """
    try:
        _authorise(request)
    except ApiError as exc:
        return _early_error(exc.status, exc.code, exc.message)
    if request.version != HttpVersion11:
        return None
    expect = request.headers.get(hdrs.EXPECT, "")
    if expect.lower() != "100-continue":
        return _early_error(417, "EXPECTATION_FAILED", f"unknown Expect: {expect}")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the interim response is not part of the reply
    return None


def _early_error(status: int, code: str, message: str) -> web.Response:
    response = error_response(uuid.uuid4().hex, status, code, message)
    # The body announced will not be read: closing is the only way to skip it.
    response.force_close()
    return response


@docs(
    tags=["storage"],
    summary="Upload an object through a signed URL (local storage only)",
    description="Streams the body to storage; any size. Get the URL from the dataset or model "
    "endpoints. Send `Expect: 100-continue` to have a bad URL refused before the body.",
    security=[],
    parameters=_SIGNED_PARAMETERS,
    requestBody={"content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}}},
    responses={
        200: {"description": "Stored", "schema": envelope(StoredSchema, "StoredObject")},
        **_SIGNED_ERRORS,
        400: {"description": "The upload was interrupted", "schema": ErrorSchema},
        409: {
            "description": "Already uploaded: signed uploads are write-once",
            "schema": ErrorSchema,
        },
        422: {"description": "The key is not a valid storage key", "schema": ErrorSchema},
    },
)
async def upload(request: web.Request) -> web.Response:
    storage, key = _authorise(request)
    try:
        exists = await storage.exists(key)
    except StorageError as exc:
        raise ValidationFailed(str(exc), {"key": key}) from exc
    if exists:
        # Signed uploads are write-once: a URL still valid after a dataset version was made
        # from its file must not be able to change the file under the version.
        return _early_error(409, "CONFLICT", "an object is already stored under this key")
    content_type = request.headers.get(hdrs.CONTENT_TYPE)
    try:
        stored = await storage.write(key, request.content.iter_chunked(CHUNK_BYTES), content_type)
    except StorageError as exc:
        raise ValidationFailed(str(exc), {"key": key}) from exc
    except (ConnectionError, HttpProcessingError) as exc:
        # The client went away or sent a broken body; the write stored nothing. Not a 500:
        # nothing failed on our side.
        raise BadRequest("the upload was interrupted", {"key": key}) from exc
    return ok({"key": stored.key, "size_bytes": stored.size_bytes, "sha256": stored.sha256})


@docs(
    tags=["storage"],
    summary="Download an object through a signed URL (local storage only)",
    security=[],
    parameters=_SIGNED_PARAMETERS,
    responses={
        200: {
            "description": "The object's bytes",
            "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        },
        **_SIGNED_ERRORS,
    },
)
async def download(request: web.Request) -> web.StreamResponse:
    storage, key = _authorise(request)
    try:
        handle = await open_in_thread(storage.path(key), "rb")
    except (StorageError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise NotFound(f"no object {key!r}") from exc
    # Size and bytes come from one open file: an overwrite (an atomic rename) meanwhile
    # cannot change the length announced or splice two versions.
    with handle:
        response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: OCTET_STREAM})
        response.content_length = os.fstat(handle.fileno()).st_size
        await response.prepare(request)
        while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
            await response.write(chunk)
    await response.write_eof()
    return response


def routes() -> list[web.RouteDef]:
    return [
        web.put("/storage/{key:.+}", upload, expect_handler=expect_continue),
        web.get("/storage/{key:.+}", download, allow_head=False),
    ]
