"""Fixtures: one real PostgreSQL per session, a fresh database per test, the app over HTTP."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient, AiohttpServer

from runtime.app import create_app
from runtime.auth import mint_token
from runtime.config import Config
from runtime.db import apply_migrations, database_url_for, embedded_database_url
from tests.outside import Outside

TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-and-hs512-0123456789abcdef"
TEMPLATE_DB = "stepwell_template"

Client = TestClient[web.Request, web.Application]


@pytest.fixture(scope="session")
def server_url() -> str:
    """The PostgreSQL server: DATABASE_URL when set, else the embedded one.

    Its files live outside pytest's temporary directories, which pytest prunes (and another
    pytest session may prune while this one runs); the server removes them when it stops.
    """
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    return embedded_database_url(Path(tempfile.mkdtemp(prefix="stepwell-test-")), "delete")


@pytest.fixture(scope="session")
def template_url(server_url: str) -> Iterator[str]:
    """A database migrated once per session, copied for every test."""
    import asyncio

    async def recreate() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        finally:
            await conn.close()

    asyncio.run(recreate())
    url = database_url_for(server_url, TEMPLATE_DB)
    apply_migrations(url)
    yield url


@pytest.fixture
async def database_url(server_url: str, template_url: str) -> AsyncIterator[str]:
    """A fresh database for one test, cloned from the migrated template (~12 ms)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    finally:
        await conn.close()
    yield database_url_for(server_url, name)
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def config(database_url: str, tmp_path: Path) -> Config:
    return Config(database_url=database_url, data_dir=tmp_path, jwt_secret=TEST_SECRET)


@pytest.fixture
async def client(config: Config, aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(create_app(config))


def token_for(sub: str, role: str = "user", **kwargs: Any) -> str:
    return mint_token(TEST_SECRET, sub, role=role, **kwargs)


def auth(sub: str = "alice", role: str = "user") -> dict[str, str]:
    """Headers authenticating as `sub`."""
    return {"Authorization": f"Bearer {token_for(sub, role)}"}


SIMPLE_DEFINITION: dict[str, Any] = {
    "nodes": [
        {"id": "fetch", "type": "http", "data": {"url": "http://127.0.0.1:1/data"}},
        {"id": "shape", "type": "transform", "data": {"output": {"b": "{{ steps.fetch.output }}"}}},
    ],
    "edges": [{"source": "fetch", "target": "shape"}],
}

MakeWorkflow = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def make_workflow(client: Client) -> MakeWorkflow:
    """Create a workflow through the API (optionally published) and return its JSON."""

    async def make(user: str = "alice", *, publish: bool = False, **fields: Any) -> dict[str, Any]:
        body = {"name": "wf", "workflow_type": "general", "definition": SIMPLE_DEFINITION}
        body.update(fields)
        resp = await client.post("/api/v1/workflows", json=body, headers=auth(user))
        assert resp.status == 201, await resp.text()
        data: dict[str, Any] = (await resp.json())["data"]
        if publish:
            resp = await client.post(f"/api/v1/workflows/{data['id']}/publish", headers=auth(user))
            assert resp.status == 200, await resp.text()
            data = (await resp.json())["data"]
        return data

    return make


@pytest.fixture
async def outside(aiohttp_server: AiohttpServer) -> tuple[Outside, str]:
    """The stand-in outside world and its base URL."""
    world = Outside()
    server = await aiohttp_server(world.app())
    return world, str(server.make_url("")).rstrip("/")


Publish = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def publish(client: Client) -> Publish:
    """Create and publish a workflow with the given nodes and edges."""

    async def make(
        nodes: list[dict[str, Any]],
        edges: list[dict[str, Any]] | None = None,
        user: str = "alice",
        **fields: Any,
    ) -> dict[str, Any]:
        body = {"name": "wf", "definition": {"nodes": nodes, "edges": edges or []}, **fields}
        resp = await client.post("/api/v1/workflows", json=body, headers=auth(user))
        assert resp.status == 201, await resp.text()
        wf_id = (await resp.json())["data"]["id"]
        resp = await client.post(f"/api/v1/workflows/{wf_id}/publish", headers=auth(user))
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = (await resp.json())["data"]
        return data

    return make


async def start_run(
    client: Client,
    workflow_id: str,
    run_input: dict[str, Any] | None = None,
    user: str = "alice",
    **extra: Any,
) -> dict[str, Any]:
    resp = await client.post(
        f"/api/v1/workflows/{workflow_id}/run",
        json={"input": run_input or {}, **extra},
        headers=auth(user),
    )
    assert resp.status == 202, await resp.text()
    data: dict[str, Any] = (await resp.json())["data"]
    return data


async def wait_run(
    client: Client,
    run_id: str,
    statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
    within_s: float = 20.0,
    user: str = "alice",
) -> dict[str, Any]:
    """Poll the API until the run reaches one of `statuses`; returns the run."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        resp = await client.get(f"/api/v1/runs/{run_id}", headers=auth(user))
        run: dict[str, Any] = (await resp.json())["data"]
        if run["status"] in statuses:
            return run
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"run stayed {run['status']}: {run}")
        await asyncio.sleep(0.05)


async def events_of(client: Client, run_id: str, user: str = "alice") -> list[dict[str, Any]]:
    resp = await client.get(f"/api/v1/runs/{run_id}/events?limit=1000", headers=auth(user))
    events: list[dict[str, Any]] = (await resp.json())["data"]
    return events
