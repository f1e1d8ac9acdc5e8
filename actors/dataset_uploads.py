"""Dataset uploads: files streamed through Stepwell (multipart) or sent straight to storage
through signed URLs.

Bytes go to storage before any row is written, so no transaction stays open while a client
sends a large file; the rows (upload, files, audit entry) are then written together, and the
stored objects are removed again when that fails.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import asyncpg
from aiohttp import BodyPartReader, MultipartReader, hdrs

from runtime.audit import AuditContext, record_audit
from runtime.db import Conn
from runtime.errors import NotFound, ValidationFailed
from runtime.sql import queries
from runtime.storage.base import CHUNK_BYTES, Storage, StoredObject

log = logging.getLogger(__name__)
ENTITY = "dataset"
UPLOAD_TTL_S = 3600
MAX_NAME_LENGTH = 255
MAX_FILES = 1000


@dataclass(frozen=True, slots=True)
class UploadFile:
    """A file of an upload: where it goes and, once its bytes are stored, what they are."""

    name: str
    storage_key: str
    content_type: str | None
    stored: StoredObject | None = None


def check_file_name(name: str | None) -> str:
    """The name when it is safe as the last segment of a storage key; 422 otherwise."""
    problem = None
    if not name:
        problem = "is empty"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif name.startswith("."):  # ".", ".." and hidden names
        problem = "starts with a dot"
    elif len(name) > MAX_NAME_LENGTH:
        problem = f"is longer than {MAX_NAME_LENGTH} characters"
    elif not name.isprintable():
        problem = "contains control characters"
    if problem:
        raise ValidationFailed(f"file name {name!r} {problem}", {"file": name})
    assert name is not None  # noqa: S101 - an empty or missing name was refused above
    return name


def upload_key(dataset_id: uuid.UUID, upload_id: uuid.UUID, name: str) -> str:
    """The storage key of one uploaded file."""
    return f"datasets/{dataset_id}/uploads/{upload_id}/{name}"


def _content_type(name: str, given: str | None) -> str | None:
    # Browsers label unknown files application/octet-stream; the extension says more.
    if given and given != "application/octet-stream":
        return given
    return mimetypes.guess_type(name)[0] or given


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK_BYTES):
        yield chunk


async def receive_multipart(
    reader: MultipartReader, storage: Storage, dataset_id: uuid.UUID, upload_id: uuid.UUID
) -> list[UploadFile]:
    """Stream every file part of a multipart body into storage, one part at a time."""
    files: list[UploadFile] = []
    try:
        async for part in reader:
            if not isinstance(part, BodyPartReader) or part.filename is None:
                raise ValidationFailed("every part of a dataset upload must be a file")
            # RFC 7578 lets clients percent-encode file names (aiohttp's client does)
            name = check_file_name(unquote(part.filename))
            if any(f.name == name for f in files):
                raise ValidationFailed(f"file {name!r} appears twice in the upload", {"file": name})
            if len(files) >= MAX_FILES:
                raise ValidationFailed(f"an upload holds at most {MAX_FILES} files")
            key = upload_key(dataset_id, upload_id, name)
            content_type = _content_type(name, part.headers.get(hdrs.CONTENT_TYPE))
            stored = await storage.write(key, _part_chunks(part), content_type)
            files.append(UploadFile(name, key, content_type, stored))
    except BaseException:
        await discard(storage, files)
        raise
    if not files:
        raise ValidationFailed("the upload has no files")
    return files


async def discard(storage: Storage, files: Sequence[UploadFile]) -> None:
    """Remove stored objects of an upload that was not recorded (best effort)."""
    for file in files:
        try:
            await storage.delete(file.storage_key)
        except Exception:  # the upload already failed; a leftover object is only clutter
            log.warning("could not remove %s", file.storage_key, exc_info=True)


def signed_files(
    dataset_id: uuid.UUID, upload_id: uuid.UUID, requested: Sequence[Mapping[str, Any]]
) -> list[UploadFile]:
    """The files of a signed-URL upload request, names checked, no bytes yet."""
    files: list[UploadFile] = []
    for entry in requested:
        name = check_file_name(entry.get("name"))
        if any(f.name == name for f in files):
            raise ValidationFailed(f"file {name!r} appears twice in the upload", {"file": name})
        content_type = _content_type(name, entry.get("content_type"))
        files.append(UploadFile(name, upload_key(dataset_id, upload_id, name), content_type))
    if not files:
        raise ValidationFailed("the upload has no files")
    return files


async def record_upload(
    conn: Conn,
    ctx: AuditContext,
    dataset_id: uuid.UUID,
    upload_id: uuid.UUID,
    method: str,
    files: Sequence[UploadFile],
) -> asyncpg.Record:
    """Write the upload, its files and the audit entry; the caller owns the transaction."""
    dataset = await conn.fetchrow(queries["lock_dataset"], dataset_id, ctx.principal.owner_filter)
    if dataset is None:  # deleted while the bytes were arriving
        raise NotFound(f"dataset {dataset_id} not found")
    upload = await conn.fetchrow(
        queries["insert_dataset_upload"],
        upload_id,
        dataset_id,
        method,
        ctx.principal.user_id,
        float(UPLOAD_TTL_S),
    )
    assert upload is not None  # noqa: S101 - INSERT ... RETURNING always returns the row
    for f in files:
        size, sha256 = (f.stored.size_bytes, f.stored.sha256) if f.stored else (None, None)
        await conn.execute(
            queries["insert_dataset_file"],
            upload_id,
            f.name,
            f.storage_key,
            f.content_type,
            size,
            sha256,
        )
    await record_audit(
        conn,
        ctx,
        action="upload",
        entity_type=ENTITY,
        entity_id=str(dataset_id),
        owner_id=dataset["owner_id"],
        changes={"upload_id": str(upload_id), "method": method, "files": [f.name for f in files]},
    )
    return upload


def file_json(file: UploadFile) -> dict[str, Any]:
    """A received file as the API shows it."""
    stored = file.stored
    return {
        "name": file.name,
        "storage_key": file.storage_key,
        "content_type": file.content_type,
        "size_bytes": stored.size_bytes if stored else None,
        "sha256": stored.sha256 if stored else None,
    }


async def signed_upload_json(
    storage: Storage, upload: asyncpg.Record, files: Sequence[UploadFile]
) -> dict[str, Any]:
    """The answer to a signed-URL upload request: where to PUT each file, and with which
    headers (a signature may cover the content type, so the client must send the same one)."""
    entries = []
    for f in files:
        url = await storage.signed_url(f.storage_key, "PUT", UPLOAD_TTL_S, f.content_type)
        headers = {"Content-Type": f.content_type} if f.content_type else {}
        entries.append({"name": f.name, "upload_url": url, "method": "PUT", "headers": headers})
    expires_at: datetime = upload["expires_at"]
    return {"upload_id": str(upload["id"]), "expires_at": expires_at.isoformat(), "files": entries}


@contextlib.asynccontextmanager
async def discarded_on_error(storage: Storage, files: Sequence[UploadFile]) -> AsyncIterator[None]:
    """Remove the stored objects when recording the upload fails."""
    try:
        yield
    except BaseException:
        await discard(storage, files)
        raise
