"""Datasets and their versions.

A version is an immutable snapshot of one upload: its files with size and SHA-256, a total
digest over them, and who made it. Each upload makes at most one version. Writes run in the
caller's transaction together with their audit entry; reading and digesting stored objects
happens before that transaction (`measure_files`), so no lock is held while bytes stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from uuid import UUID

import asyncpg

from runtime.audit import AuditContext, record_audit
from runtime.db import Conn
from runtime.errors import Conflict, NotFound, ValidationFailed
from runtime.sql import queries
from runtime.storage.base import Storage

ENTITY = "dataset"
DATASET_TYPES = ("tabular", "time-series", "image", "text", "other")


@dataclass(frozen=True, slots=True)
class VersionFile:
    """One file of a version, as recorded in its `files` column."""

    name: str
    storage_key: str
    uri: str
    size_bytes: int
    sha256: str
    content_type: str | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def get_dataset(conn: Conn, dataset_id: UUID, owner: str | None) -> asyncpg.Record:
    """An active dataset the caller may see; 404 for deleted ones and other users'."""
    row = await conn.fetchrow(queries["get_dataset"], dataset_id, owner)
    if row is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return row


async def _locked(conn: Conn, dataset_id: UUID, owner: str | None) -> asyncpg.Record:
    row = await conn.fetchrow(queries["lock_dataset"], dataset_id, owner)
    if row is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return row


async def create_dataset(
    conn: Conn, ctx: AuditContext, fields: Mapping[str, Any]
) -> asyncpg.Record:
    """A new, empty dataset owned by the caller."""
    row = await conn.fetchrow(
        queries["insert_dataset"],
        ctx.principal.user_id,
        fields["name"],
        fields.get("description", ""),
        fields.get("dataset_type", "tabular"),
        ctx.principal.user_id,
    )
    assert row is not None  # noqa: S101 - INSERT ... RETURNING always returns the row
    await record_audit(
        conn,
        ctx,
        action="create",
        entity_type=ENTITY,
        entity_id=str(row["id"]),
        owner_id=row["owner_id"],
        changes={k: row[k] for k in ("name", "description", "dataset_type")},
    )
    return row


async def delete_dataset(conn: Conn, ctx: AuditContext, dataset_id: UUID) -> None:
    """Hide a dataset. Its files and versions stay in place until a purge removes them, so
    models trained on a version keep their lineage."""
    row = await _locked(conn, dataset_id, ctx.principal.owner_filter)
    await conn.execute(queries["soft_delete_dataset"], dataset_id)
    await record_audit(
        conn,
        ctx,
        action="delete",
        entity_type=ENTITY,
        entity_id=str(dataset_id),
        owner_id=row["owner_id"],
        changes={"status": {"from": row["status"], "to": "deleted"}},
    )


def _ensure_open(upload: asyncpg.Record) -> None:
    if upload["status"] != "open":
        raise Conflict(
            f"cannot create a version: upload {upload['id']} was already used for one",
            {"upload_id": str(upload["id"]), "status": upload["status"]},
        )


async def upload_to_version(
    conn: Conn, owner: str | None, dataset_id: UUID, upload_id: UUID
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """The open upload a version is about to be made from, and its file rows."""
    await get_dataset(conn, dataset_id, owner)
    upload = await conn.fetchrow(queries["get_dataset_upload"], upload_id, dataset_id)
    if upload is None:
        raise ValidationFailed(
            f"upload {upload_id} does not belong to dataset {dataset_id}",
            {"upload_id": str(upload_id)},
        )
    _ensure_open(upload)
    files = list(await conn.fetch(queries["list_upload_files"], upload_id))
    if not files:
        raise ValidationFailed("cannot create a version: the upload has no files")
    return upload, files


async def measure_files(
    storage: Storage, upload: asyncpg.Record, files: Sequence[asyncpg.Record]
) -> list[VersionFile]:
    """Check every file is stored; digest the ones sent by signed URL (streamed)."""
    measured: list[VersionFile] = []
    missing: list[str] = []
    for row in files:
        key = row["storage_key"]
        if not await storage.exists(key):
            missing.append(row["name"])
            continue
        size, sha256 = row["size_bytes"], row["sha256"]
        if sha256 is None:  # sent straight to storage: Stepwell has not seen the bytes yet
            stored = await storage.describe(key)
            size, sha256 = stored.size_bytes, stored.sha256
        measured.append(
            VersionFile(row["name"], key, storage.uri(key), size, sha256, row["content_type"])
        )
    if missing:
        when = "expired before it was" if upload["expired"] else "was not yet"
        raise ValidationFailed(
            f"cannot create a version: the upload {when} complete; missing "
            + ", ".join(repr(name) for name in missing),
            {"upload_id": str(upload["id"]), "missing_files": missing},
        )
    return measured


def total_digest(files: Sequence[VersionFile]) -> str:
    """SHA-256 over the sorted lines "<name> <sha256>\\n": equal for equal contents."""
    lines = sorted(f"{f.name} {f.sha256}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


async def create_version(
    conn: Conn,
    ctx: AuditContext,
    dataset_id: UUID,
    upload_id: UUID,
    files: Sequence[VersionFile],
    description: str,
) -> asyncpg.Record:
    """Record the next version of a dataset from a measured upload and mark the upload used."""
    dataset = await _locked(conn, dataset_id, ctx.principal.owner_filter)
    upload = await conn.fetchrow(queries["lock_dataset_upload"], upload_id, dataset_id)
    if upload is None:
        raise ValidationFailed(f"upload {upload_id} does not belong to dataset {dataset_id}")
    _ensure_open(upload)  # again, under the lock: a concurrent request may have used it
    if not files:
        raise ValidationFailed("cannot create a version: the upload has no files")
    for f in files:
        await conn.execute(
            queries["complete_dataset_file"], upload_id, f.name, f.size_bytes, f.sha256
        )
    await conn.execute(queries["lock_dataset_versions"], str(dataset_id))
    number = await conn.fetchval(queries["next_dataset_version"], dataset_id)
    version = await conn.fetchrow(
        queries["insert_dataset_version"],
        dataset_id,
        number,
        description,
        [f.as_json() for f in sorted(files, key=lambda f: f.name)],
        total_digest(files),
        sum(f.size_bytes for f in files),
        ctx.principal.user_id,
    )
    assert version is not None  # noqa: S101 - INSERT ... RETURNING always returns the row
    await conn.execute(queries["mark_upload_used"], upload_id)
    await record_audit(
        conn,
        ctx,
        action="create_version",
        entity_type=ENTITY,
        entity_id=str(dataset_id),
        owner_id=dataset["owner_id"],
        changes={"version": number, "upload_id": str(upload_id), "files": len(files)},
    )
    return version
