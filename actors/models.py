"""The model registry: models, numbered versions with lineage, and aliases that point at them.

Every mutation runs in the caller's transaction, locks the model it changes, and writes its audit
entries (entity "model", whatever part of the model changed) beside the change.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg

from runtime.audit import AuditContext, changed_fields, record_audit
from runtime.db import Conn
from runtime.errors import Conflict, NotFound, ValidationFailed
from runtime.sql import queries

ENTITY = "model"
# The same lists as the CHECK constraints in migrations/0004.ml_data.sql.
MODEL_TYPES = ("classification", "regression", "clustering", "generation")
FRAMEWORKS = ("tensorflow", "pytorch", "scikit-learn", "jax")
ARTIFACT_SCHEMES = ("gs", "s3", "file", "http", "https")
ALIAS_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MAX_VERSION = 2**31 - 1  # model_versions.version is an int4
VERSION_FIELDS = ("description", "metadata", "metrics")


class ModelStatus(StrEnum):
    ACTIVE = "active"
    ARCHIVED = "archived"


def ensure_active(action: str, model: asyncpg.Record) -> None:
    """Raise Conflict("cannot add a version: model is archived") for an archived model."""
    if model["status"] != ModelStatus.ACTIVE:
        raise Conflict(
            f"cannot {action}: model is {model['status']} (only active models allow it)",
            {"status": model["status"]},
        )


def alias_problem(name: str) -> str | None:
    """Why `name` cannot be an alias, or None when it can."""
    if not ALIAS_RE.fullmatch(name):
        return "1 to 64 characters: lowercase letters, digits, '_' or '-', starting alnum"
    if name.isdigit():
        return "an alias cannot be all digits: it would read as a version number"
    return None


def artifact_uri_problem(uri: str) -> str | None:
    """Why `uri` is not an artifact location we can hand to a deployer, or None."""
    if any(ch.isspace() for ch in uri):
        return "a URI has no whitespace"
    parts = urlsplit(uri)
    if parts.scheme not in ARTIFACT_SCHEMES:
        return f"the scheme must be one of {', '.join(ARTIFACT_SCHEMES)}"
    # file:///path has no host; every other scheme names a bucket or host.
    if parts.scheme != "file" and not parts.netloc:
        return f"{parts.scheme}:// needs a bucket or host"
    if parts.scheme == "file" and not parts.path.startswith("/"):
        return "file:// needs an absolute path"
    return None


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def json_problem(value: Any) -> str | None:
    """Python's JSON reader accepts NaN and Infinity; PostgreSQL's jsonb refuses them."""
    return None if _finite(value) else "NaN and Infinity are not JSON numbers"


def metrics_problem(metrics: Mapping[str, Any]) -> str | None:
    """Metrics are what versions are compared by, so each must be a finite number."""
    bad = [
        k
        for k, v in metrics.items()
        if isinstance(v, bool) or not isinstance(v, int | float) or not _finite(v)
    ]
    return f"not finite numbers: {', '.join(sorted(bad))}" if bad else None


def version_ref(ref: str) -> tuple[int | None, str | None]:
    """A path's `{v}`: a version number when all digits, else an alias name."""
    if ref.isdigit():
        number = int(ref)
        # Out of int4 range cannot exist; 0 keeps the lookup a plain miss.
        return (number if number <= MAX_VERSION else 0), None
    return None, ref


async def _locked(
    conn: Conn, model_id: UUID, owner: str | None, *, shared: bool = False
) -> asyncpg.Record:
    query = queries["lock_model_shared" if shared else "lock_model"]
    row = await conn.fetchrow(query, model_id, owner)
    if row is None:
        raise NotFound(f"model {model_id} not found")
    return row


async def get_model(conn: Conn, model_id: UUID, owner: str | None) -> asyncpg.Record:
    """The model with its aliases and latest version number; 404 when not visible."""
    row = await conn.fetchrow(queries["get_model"], model_id, owner)
    if row is None:
        raise NotFound(f"model {model_id} not found")
    return row


async def get_version(conn: Conn, model_id: UUID, ref: str, owner: str | None) -> asyncpg.Record:
    """A version of a visible model by number or alias name; 404 otherwise."""
    await get_model(conn, model_id, owner)
    number, alias = version_ref(ref)
    row = await conn.fetchrow(queries["get_model_version"], model_id, number, alias)
    if row is None:
        raise NotFound(f"model {model_id} has no version {ref!r}")
    return row


async def create_model(conn: Conn, ctx: AuditContext, fields: Mapping[str, Any]) -> asyncpg.Record:
    """A new active model owned by the caller."""
    user = ctx.principal.user_id
    values = {
        "name": fields["name"],
        "description": fields.get("description", ""),
        "model_type": fields["model_type"],
        "framework": fields["framework"],
    }
    model_id = await conn.fetchval(queries["insert_model"], user, *values.values(), user)
    await record_audit(
        conn,
        ctx,
        action="create",
        entity_type=ENTITY,
        entity_id=str(model_id),
        owner_id=user,
        changes=values,
    )
    return await get_model(conn, model_id, None)


async def archive_model(conn: Conn, ctx: AuditContext, model_id: UUID) -> asyncpg.Record:
    """Archive a model: readable still, but it takes no new versions. Twice is not an error."""
    row = await _locked(conn, model_id, ctx.principal.owner_filter)
    if row["status"] == ModelStatus.ACTIVE:
        await conn.execute(queries["archive_model"], model_id)
        await record_audit(
            conn,
            ctx,
            action="archive",
            entity_type=ENTITY,
            entity_id=str(model_id),
            owner_id=row["owner_id"],
            changes={"status": {"from": row["status"], "to": ModelStatus.ARCHIVED}},
        )
    return await get_model(conn, model_id, None)


async def _check_lineage(conn: Conn, fields: Mapping[str, Any], owner: str | None) -> None:
    """The dataset version must exist in a dataset the caller can see."""
    dataset_version_id = fields.get("dataset_version_id")
    if dataset_version_id is None:
        return
    found = await conn.fetchval(queries["find_visible_dataset_version"], dataset_version_id, owner)
    if found is None:
        raise ValidationFailed(
            f"dataset version {dataset_version_id} not found",
            {"fields": {"dataset_version_id": ["no such dataset version"]}},
        )


async def create_version(
    conn: Conn, ctx: AuditContext, model_id: UUID, fields: Mapping[str, Any]
) -> asyncpg.Record:
    """The next numbered version of an active model, with its lineage and any aliases."""
    model = await _locked(conn, model_id, ctx.principal.owner_filter, shared=True)
    ensure_active("add a version", model)
    await _check_lineage(conn, fields, ctx.principal.owner_filter)
    await conn.execute(queries["lock_model_versions"], str(model_id))
    number = await conn.fetchval(queries["next_model_version"], model_id)
    version = await conn.fetchrow(
        queries["insert_model_version"],
        model_id,
        number,
        fields["artifact_uri"],
        fields.get("framework", model["framework"]),
        fields.get("description", ""),
        fields.get("metrics", {}),
        fields.get("parameters", {}),
        fields.get("metadata", {}),
        fields.get("dataset_version_id"),
        # Stored unchecked: this API was specified before training_jobs existed (0005); checking
        # that the job is the caller's is a follow-up.
        fields.get("training_job_id"),
        ctx.principal.user_id,
    )
    assert version is not None  # noqa: S101 - INSERT ... RETURNING always returns the row
    await record_audit(
        conn,
        ctx,
        action="version.create",
        entity_type=ENTITY,
        entity_id=str(model_id),
        owner_id=model["owner_id"],
        changes={
            "version": number,
            "artifact_uri": fields["artifact_uri"],
            "dataset_version_id": fields.get("dataset_version_id"),
            "training_job_id": fields.get("training_job_id"),
        },
    )
    await _point_aliases(conn, ctx, model, version, fields.get("aliases", ()), remove=False)
    return await get_version(conn, model_id, str(number), None)


async def update_version(
    conn: Conn, ctx: AuditContext, model_id: UUID, ref: str, fields: Mapping[str, Any]
) -> asyncpg.Record:
    """Replace a version's description, metadata or metrics; set its full list of aliases."""
    # The exclusive model lock keeps alias moves in order with each other and with new versions.
    model = await _locked(conn, model_id, ctx.principal.owner_filter)
    ensure_active("update a version", model)
    version = await get_version(conn, model_id, ref, None)
    before = {k: version[k] for k in VERSION_FIELDS}
    after = {**before, **{k: fields[k] for k in VERSION_FIELDS if k in fields}}
    changes = changed_fields(before, after)
    if changes:
        await conn.execute(
            queries["update_model_version"], version["id"], *(after[k] for k in VERSION_FIELDS)
        )
        await record_audit(
            conn,
            ctx,
            action="version.update",
            entity_type=ENTITY,
            entity_id=str(model_id),
            owner_id=model["owner_id"],
            changes={"version": version["version"], **changes},
        )
    if "aliases" in fields:
        await _point_aliases(conn, ctx, model, version, fields["aliases"], remove=True)
    return await get_version(conn, model_id, str(version["version"]), None)


async def _point_aliases(
    conn: Conn,
    ctx: AuditContext,
    model: asyncpg.Record,
    version: asyncpg.Record,
    wanted: Sequence[str],
    *,
    remove: bool,
) -> None:
    """Move each wanted alias to `version`; with `remove`, drop its aliases not wanted.

    Every alias that changes target is its own "alias.move" audit entry, from the version it
    left (None for a new alias) to the one it reached (None when removed).
    """
    current = {r["alias"]: r for r in await conn.fetch(queries["list_model_aliases"], model["id"])}
    moves: list[tuple[str, int | None, int | None]] = []
    for alias in dict.fromkeys(wanted):
        was = current.get(alias)
        if was is None or was["version_id"] != version["id"]:
            await conn.execute(
                queries["upsert_model_alias"],
                model["id"],
                alias,
                version["id"],
                ctx.principal.user_id,
            )
            moves.append((alias, None if was is None else was["version"], version["version"]))
    if remove:
        for alias, was in current.items():
            if was["version_id"] == version["id"] and alias not in wanted:
                await conn.execute(queries["delete_model_alias"], model["id"], alias)
                moves.append((alias, was["version"], None))
    for alias, old, new in moves:
        await record_audit(
            conn,
            ctx,
            action="alias.move",
            entity_type=ENTITY,
            entity_id=str(model["id"]),
            owner_id=model["owner_id"],
            changes={"alias": alias, "version": {"from": old, "to": new}},
        )
