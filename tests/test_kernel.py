"""Errors, request ids, routing, docs, health, the SQL loader and migrations."""

from __future__ import annotations

import io
import json
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pytest_aiohttp import AiohttpClient

from runtime.app import create_app
from runtime.config import Config
from runtime.db import apply_migrations, create_pool, database_url_for
from runtime.json_text import response_json
from runtime.sql import DuplicateQueryError, load_queries, parse_queries, queries
from tests.conftest import Client, auth

ROOT = Path(__file__).resolve().parent.parent


async def test_unknown_route_is_json_404_even_without_auth(client: Client) -> None:
    resp = await client.get("/api/v1/nope")
    assert resp.status == 404
    body = await resp.json()
    assert body["error"]["code"] == "NOT_FOUND"
    assert body["error"]["request_id"] == resp.headers["X-Request-ID"]


async def test_wrong_method_is_json_405(client: Client) -> None:
    resp = await client.delete("/api/v1/workflows", headers=auth())
    assert resp.status == 405
    body = await resp.json()
    assert body["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert "GET" in body["error"]["details"]["allowed_methods"]


async def test_client_request_id_is_echoed_and_bad_ones_replaced(client: Client) -> None:
    resp = await client.get("/health", headers={"X-Request-ID": "trace-123"})
    assert resp.headers["X-Request-ID"] == "trace-123"
    resp = await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"])


async def test_malformed_json_and_oversized_bodies_are_4xx(client: Client) -> None:
    headers = {**auth(), "Content-Type": "application/json"}
    resp = await client.post("/api/v1/workflows", data=b"{not json", headers=headers)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "BAD_REQUEST"
    resp = await client.post("/api/v1/workflows", data=b"[1, 2]", headers=headers)
    assert resp.status == 422
    big = b'{"name": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    resp = await client.post("/api/v1/workflows", data=io.BytesIO(big), headers=headers)
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_ready_checks_the_database(client: Client) -> None:
    resp = await client.get("/health/ready")
    assert await resp.json() == {"status": "ok", "checks": {"database": "ok"}}


async def test_openapi_documents_every_route(client: Client) -> None:
    resp = await client.get("/api/docs/openapi.json")
    spec = await resp.json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for route in client.app.router.routes():
        info = route.get_info()
        path = info.get("path") or info.get("formatter")
        if not path or not path.startswith("/api/v1") or route.method == "HEAD":
            continue
        operation = paths[path][route.method.lower()]
        assert operation.get("summary"), f"{route.method} {path} has no summary"
        assert operation.get("responses"), f"{route.method} {path} has no responses"
    create = paths["/api/v1/workflows"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]
    assert "201" in create["responses"] and "422" in create["responses"]
    assert "bearerAuth" in spec["components"]["securitySchemes"]


async def test_swagger_ui_is_served(client: Client) -> None:
    resp = await client.get("/api/docs")
    assert resp.status == 200
    assert "swagger" in (await resp.text()).lower()


def test_every_query_used_in_code_exists() -> None:
    used: set[str] = set()
    for path in [
        *ROOT.glob("runtime/**/*.py"),
        *ROOT.glob("handlers/**/*.py"),
        *ROOT.glob("actors/**/*.py"),
    ]:
        used |= set(re.findall(r'queries\["(\w+)"\]', path.read_text()))
    assert used, "the scan found no query names"
    missing = used - set(queries)
    assert not missing, f"queries used but not defined: {sorted(missing)}"


def test_sql_loader_parses_blocks_and_refuses_duplicates(tmp_path: Path) -> None:
    text = "-- name: a\n-- $1 x\nSELECT $1;\n\n-- name: b\nSELECT 2;\n"
    assert parse_queries(text) == {"a": "SELECT $1;", "b": "SELECT 2;"}
    with pytest.raises(DuplicateQueryError):
        parse_queries(text + "-- name: a\nSELECT 3;\n")
    (tmp_path / "one.sql").write_text("-- name: a\nSELECT 1;\n")
    (tmp_path / "two.sql").write_text("-- name: a\nSELECT 1;\n")
    with pytest.raises(DuplicateQueryError):
        load_queries(tmp_path)


async def test_migrations_apply_from_empty_and_are_idempotent(server_url: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute('DROP DATABASE IF EXISTS "migrate_check" WITH (FORCE)')
        await conn.execute('CREATE DATABASE "migrate_check"')
    finally:
        await conn.close()
    url = database_url_for(server_url, "migrate_check")
    applied = apply_migrations(url)
    assert applied and applied[0].startswith("0001")
    assert apply_migrations(url) == []
    conn = await asyncpg.connect(url)
    try:
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    finally:
        await conn.close()
    assert {"workflows", "api_keys", "idempotency_keys", "audit_logs"} <= tables


async def test_nan_and_infinity_are_422_not_500(client: Client) -> None:
    headers = {**auth(), "Content-Type": "application/json"}
    for body in (
        b'{"name": "x", "input_schema": {"default": NaN}}',
        b'{"name": "x", "definition": {"nodes": [], "edges": [], "k": Infinity}}',
    ):
        resp = await client.post("/api/v1/workflows", data=body, headers=headers)
        assert resp.status == 422, await resp.text()
        assert (await resp.json())["error"]["code"] == "VALIDATION_ERROR"
    resp = await client.get("/api/v1/workflows", headers=auth())
    assert (await resp.json())["pagination"]["total"] == 0


async def test_json_values_are_stored_as_given(database_url: str) -> None:
    """The jsonb codec's fast writer and its fallback store the same values: what each
    writer cannot say the same way goes through the fallback, and NaN is refused."""
    big = 2**70
    at = datetime(2026, 12, 4, 15, 30, tzinfo=UTC)
    run_id = uuid.UUID("a336e4e0-0afb-4a87-a36e-27f550fbf658")
    cases: list[tuple[Any, Any]] = [
        ({"é": "ünïcode ✓", "n": [1, 2.5, -0.0, True, False]}, None),
        ({"nested": {"deep": [{"x": 1e16}, {"y": 1e-7}]}, "none": None}, None),
        ({"big": big}, {"big": big}),
        ({"at": at, "id": run_id}, {"at": str(at), "id": str(run_id)}),
        ({1: "int key"}, {"1": "int key"}),
        ({"mentions null": "null"}, None),
    ]
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        for value, stored in cases:
            back = await pool.fetchval("SELECT $1::jsonb", value)
            assert back == (value if stored is None else stored)
        for bad in (float("nan"), float("inf")):
            with pytest.raises(asyncpg.DataError):
                await pool.fetchval("SELECT $1::jsonb", {"x": [bad]})
    finally:
        await pool.close()


def test_answers_are_strict_json() -> None:
    def strict(text: str) -> Any:
        return json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in {text}"))

    at = datetime(2026, 12, 4, 15, 30, tzinfo=UTC)
    assert strict(response_json({"x": float("nan"), "y": [float("inf")], 1: "a"})) == {
        "x": None,
        "y": [None],
        "1": "a",
    }
    assert strict(response_json({"at": at, "é": "✓"})) == {"at": at.isoformat(), "é": "✓"}
    assert strict(response_json({"big": 2**70})) == {"big": 2**70}


async def test_cors_for_configured_origins(config: Config, aiohttp_client: AiohttpClient) -> None:
    cfg = replace(config, cors_origins=("https://dashboard.example",))
    client = await aiohttp_client(create_app(cfg))
    preflight = {
        "Origin": "https://dashboard.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    resp = await client.options("/api/v1/workflows", headers=preflight)
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://dashboard.example"
    resp = await client.get(
        "/api/v1/workflows", headers={**auth(), "Origin": "https://dashboard.example"}
    )
    assert resp.headers["Access-Control-Allow-Origin"] == "https://dashboard.example"
    assert "X-Request-ID" in resp.headers["Access-Control-Expose-Headers"]
    resp = await client.options(
        "/api/v1/workflows", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert resp.status == 403
