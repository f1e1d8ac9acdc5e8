"""Page/limit pagination in the contract's shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from marshmallow import Schema, fields, validate

from runtime.db import Conn

MAX_LIMIT = 100


class PageQuerySchema(Schema):
    """`?page=` (from 1) and `?limit=` (1 to 100, default 20)."""

    page = fields.Integer(
        load_default=1, validate=validate.Range(min=1, max=1_000_000), metadata={"example": 1}
    )
    limit = fields.Integer(
        load_default=20, validate=validate.Range(min=1, max=MAX_LIMIT), metadata={"example": 20}
    )


class PaginationSchema(Schema):
    page = fields.Integer(required=True, metadata={"example": 1})
    limit = fields.Integer(required=True, metadata={"example": 20})
    total = fields.Integer(required=True, metadata={"example": 57})


@dataclass(frozen=True, slots=True)
class Page:
    """One page of rows plus the total count of matching rows."""

    rows: list[asyncpg.Record]
    page: int
    limit: int
    total: int

    def body(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "data": items,
            "pagination": {"page": self.page, "limit": self.limit, "total": self.total},
        }


async def fetch_page(conn: Conn, query: str, *args: Any, page: int, limit: int) -> Page:
    """Run a list query whose last two parameters are LIMIT and OFFSET.

    The query reports the match count as a `total` column (``count(*) OVER ()``); past the last
    page no row carries it, so it is asked once more for the first row only.
    """
    rows = await conn.fetch(query, *args, limit, (page - 1) * limit)
    if rows:
        return Page(list(rows), page, limit, int(rows[0]["total"]))
    if page == 1:
        return Page([], page, limit, 0)
    first = await conn.fetch(query, *args, 1, 0)
    return Page([], page, limit, int(first[0]["total"]) if first else 0)
