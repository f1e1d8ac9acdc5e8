"""`X-Idempotency-Key`: replay, mismatch, concurrency, per-user scope, expiry."""

from __future__ import annotations

import asyncio

import asyncpg

from runtime.idempotency import request_fingerprint
from runtime.sql import queries
from tests.conftest import Client, auth

BASE = "/api/v1/workflows"


def _headers(key: str, user: str = "alice") -> dict[str, str]:
    return {**auth(user), "X-Idempotency-Key": key}


async def _count(client: Client, user: str = "alice") -> int:
    resp = await client.get(BASE, headers=auth(user))
    total: int = (await resp.json())["pagination"]["total"]
    return total


async def test_replay_returns_the_first_response(client: Client) -> None:
    first = await client.post(BASE, json={"name": "once"}, headers=_headers("k1"))
    second = await client.post(BASE, json={"name": "once"}, headers=_headers("k1"))
    assert first.status == second.status == 201
    assert (await first.json()) == (await second.json())
    assert second.headers["Idempotent-Replayed"] == "true"
    assert await _count(client) == 1


async def test_same_key_different_body_is_422(client: Client) -> None:
    await client.post(BASE, json={"name": "once"}, headers=_headers("k2"))
    resp = await client.post(BASE, json={"name": "twice"}, headers=_headers("k2"))
    assert resp.status == 422
    assert "different request" in (await resp.json())["error"]["message"]
    assert await _count(client) == 1


async def test_keys_are_per_user(client: Client) -> None:
    await client.post(BASE, json={"name": "a"}, headers=_headers("shared"))
    resp = await client.post(BASE, json={"name": "a"}, headers=_headers("shared", "bob"))
    assert resp.status == 201
    assert "Idempotent-Replayed" not in resp.headers
    assert await _count(client, "bob") == 1


async def test_concurrent_requests_with_one_key_run_once(client: Client) -> None:
    results = await asyncio.gather(
        *(client.post(BASE, json={"name": "race"}, headers=_headers("k3")) for _ in range(8))
    )
    statuses = sorted(r.status for r in results)
    assert statuses.count(201) >= 1
    assert set(statuses) <= {201, 409}
    assert await _count(client) == 1


async def test_in_flight_key_is_409(client: Client, database_url: str) -> None:
    body = b'{"name": "x"}'
    conn = await asyncpg.connect(database_url)
    try:
        # A request that is still running holds its key in flight.
        await conn.execute(
            "INSERT INTO idempotency_keys (owner_id, key, request_hash) VALUES ('alice', 'k4', $1)",
            request_fingerprint("POST", BASE, body),
        )
    finally:
        await conn.close()
    headers = {**_headers("k4"), "Content-Type": "application/json"}
    resp = await client.post(BASE, data=body, headers=headers)
    assert resp.status == 409
    assert "in progress" in (await resp.json())["error"]["message"]
    assert await _count(client) == 0


async def test_failed_request_releases_its_key(client: Client) -> None:
    resp = await client.post(BASE, json={"name": ""}, headers=_headers("k5"))
    assert resp.status == 422
    resp = await client.post(BASE, json={"name": ""}, headers=_headers("k5"))
    assert resp.status == 422, "a failed attempt may be retried with the same key"
    assert "Idempotent-Replayed" not in resp.headers


async def test_expired_keys_are_reusable_and_swept(client: Client, database_url: str) -> None:
    await client.post(BASE, json={"name": "old"}, headers=_headers("k6"))
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        resp = await client.post(BASE, json={"name": "new"}, headers=_headers("k6"))
        assert resp.status == 201
        assert (await resp.json())["data"]["name"] == "new"
        await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        await conn.execute(queries["delete_expired_idempotency_keys"])
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    finally:
        await conn.close()


async def test_bad_key_is_422(client: Client) -> None:
    resp = await client.post(BASE, json={"name": "x"}, headers=_headers("k" * 300))
    assert resp.status == 422
    assert await _count(client) == 0


async def test_secrets_are_not_kept_for_replays(client: Client, database_url: str) -> None:
    headers = _headers("key-once")
    first = await client.post("/api/v1/api-keys", json={"name": "ci"}, headers=headers)
    assert first.status == 201
    secret = (await first.json())["data"]["key"]
    again = await client.post("/api/v1/api-keys", json={"name": "ci"}, headers=headers)
    assert again.status == 409
    assert "shown only once" in (await again.json())["error"]["message"]
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval("SELECT string_agg(response_body, '') FROM idempotency_keys")
    finally:
        await conn.close()
    assert secret not in stored
    resp = await client.get("/api/v1/api-keys", headers=auth())
    assert (await resp.json())["pagination"]["total"] == 1, "the replay made no second key"
