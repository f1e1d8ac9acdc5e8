"""The audit log: who changed what, written in the same transaction as the change."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.auth import Principal
from runtime.db import Conn
from runtime.sql import queries


@dataclass(frozen=True, slots=True)
class AuditContext:
    """The caller of a mutation and the request that carried it."""

    principal: Principal
    request_id: str | None = None


def changed_fields(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The fields whose values differ, as {field: {"from": old, "to": new}}."""
    return {
        name: {"from": before.get(name), "to": value}
        for name, value in after.items()
        if before.get(name) != value
    }


async def record_audit(
    conn: Conn,
    ctx: AuditContext,
    *,
    action: str,
    entity_type: str,
    entity_id: str,
    owner_id: str,
    changes: Mapping[str, Any] | None = None,
) -> None:
    """Write one audit entry; the caller owns the transaction."""
    await conn.execute(
        queries["insert_audit_log"],
        ctx.principal.user_id,
        owner_id,
        action,
        entity_type,
        entity_id,
        dict(changes or {}),
        ctx.request_id,
    )
