"""Webhook triggers: signatures, secrets, replayed deliveries, input checks, rate limits."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from runtime.app import create_app
from runtime.config import Config
from runtime.errors import Unauthorized
from runtime.ratelimit import WEBHOOK_LIMITER, TokenBucketLimiter, webhook_limiter
from runtime.signatures import compute_signature, parse_signature, sign, verify_signature
from tests.conftest import Client, Publish, auth, wait_run

SHAPE = {"id": "shape", "type": "transform", "data": {"output": {"day": "{{ input.day }}"}}}
DAY_SCHEMA = {"type": "object", "required": ["day"], "properties": {"day": {"type": "string"}}}
BODY = {"day": "2026-11-22"}


def hook(workflow_id: str) -> str:
    return f"/api/v1/triggers/webhook/{workflow_id}"


async def set_secret(client: Client, workflow_id: str, user: str = "alice") -> str:
    resp = await client.post(f"/api/v1/workflows/{workflow_id}/webhook-secret", headers=auth(user))
    assert resp.status == 201, await resp.text()
    secret: str = (await resp.json())["data"]["secret"]
    return secret


async def call(
    client: Client,
    workflow_id: str,
    body: Any = BODY,
    *,
    secret: str | None = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST to the webhook (signed when `secret` is given): (status, JSON, headers)."""
    data = json.dumps(body).encode() if raw is None else raw
    sent = {"Content-Type": "application/json", **(headers or {})}
    if secret is not None:
        sent["X-Stepwell-Signature"] = sign(secret, data)
    resp = await client.post(hook(workflow_id), data=data, headers=sent)
    return resp.status, await resp.json(), dict(resp.headers)


async def webhook_runs(client: Client, workflow_id: str) -> list[dict[str, Any]]:
    resp = await client.get(
        f"/api/v1/runs?workflow_id={workflow_id}&trigger_type=webhook&limit=100", headers=auth()
    )
    runs: list[dict[str, Any]] = (await resp.json())["data"]
    return runs


async def test_signed_call_starts_a_webhook_run_for_the_owner(
    client: Client, publish: Publish
) -> None:
    wf = await publish([SHAPE], input_schema=DAY_SCHEMA)
    secret = await set_secret(client, wf["id"])
    status, body, _ = await call(client, wf["id"], secret=secret)  # no token: the signature is it
    assert status == 202, body
    run = body["data"]
    assert run["trigger_type"] == "webhook" and run["input"] == BODY
    assert run["owner_id"] == "alice" and run["created_by"] == "webhook"
    done = await wait_run(client, run["id"])
    assert done["status"] == "succeeded" and done["output"] == {"shape": BODY}
    resp = await client.get(
        f"/api/v1/audit-logs?entity_type=run&entity_id={run['id']}", headers=auth()
    )
    assert [e["user_id"] for e in (await resp.json())["data"]] == ["webhook"]
    # a token from someone else decides nothing: the signature still starts alice's run
    status, body, _ = await call(client, wf["id"], secret=secret, headers=auth("bob"))
    assert status == 202 and body["data"]["owner_id"] == "alice"


def _header(secret: str, data: bytes, t: int) -> str:
    return f"t={t},v1={compute_signature(secret, str(t), data)}"


@pytest.mark.parametrize(
    ("make_header", "reason"),
    [
        (lambda s, d, now: _header("whsec_wrong", d, now), "mismatch"),
        (lambda s, d, now: _header(s, d + b" ", now), "mismatch"),
        (lambda s, d, now: _header(s, d, now - 310), "stale"),
        (lambda s, d, now: _header(s, d, now + 310), "future"),
        (lambda s, d, now: _header(s, d, now).replace("v1=", "v2="), "malformed"),
        (lambda s, d, now: "sha256=" + compute_signature(s, str(now), d), "malformed"),
        (lambda s, d, now: None, "missing"),
    ],
    ids=["wrong-secret", "tampered-body", "stale", "future", "no-v1", "garbage", "missing"],
)
async def test_bad_signatures_are_401_and_start_nothing(
    client: Client, publish: Publish, make_header: Any, reason: str
) -> None:
    wf = await publish([SHAPE])
    secret = await set_secret(client, wf["id"])
    data = json.dumps(BODY).encode()
    header = make_header(secret, data, int(time.time()))
    # the owner's own token does not stand in for the signature
    headers = {**auth(), **({"X-Stepwell-Signature": header} if header else {})}
    status, body, _ = await call(client, wf["id"], raw=data, headers=headers)
    assert status == 401, body
    assert body["error"]["code"] == "UNAUTHORIZED" and body["error"]["details"]["reason"] == reason
    assert await webhook_runs(client, wf["id"]) == []


async def test_rotation_invalidates_the_old_secret(client: Client, publish: Publish) -> None:
    wf = await publish([SHAPE])
    old = await set_secret(client, wf["id"])
    new = await set_secret(client, wf["id"])
    assert old != new and new.startswith("whsec_")
    assert (await call(client, wf["id"], secret=old))[0] == 401
    assert (await call(client, wf["id"], secret=new))[0] == 202
    # a sender mid-rotation may sign with both; one match is enough
    data = json.dumps(BODY).encode()
    now = int(time.time())
    both = f"{_header(old, data, now)},v1={compute_signature(new, str(now), data)}"
    status, _, _ = await call(client, wf["id"], raw=data, headers={"X-Stepwell-Signature": both})
    assert status == 202


async def test_without_a_secret_the_caller_must_own_the_workflow(
    client: Client, publish: Publish
) -> None:
    wf = await publish([SHAPE])
    await set_secret(client, wf["id"])
    resp = await client.delete(f"/api/v1/workflows/{wf['id']}/webhook-secret", headers=auth())
    assert resp.status == 204
    assert (await call(client, wf["id"]))[0] == 401
    assert (await call(client, wf["id"], headers=auth("bob")))[0] == 404
    status, body, _ = await call(client, wf["id"], headers=auth())
    assert status == 202 and body["data"]["created_by"] == "alice"
    assert (await call(client, wf["id"], headers=auth("root", "admin")))[0] == 202
    resp = await client.delete(f"/api/v1/workflows/{wf['id']}/webhook-secret", headers=auth())
    assert resp.status == 404


async def test_unknown_and_unpublished_workflows(client: Client, publish: Publish) -> None:
    status, _, _ = await call(client, "00000000-0000-4000-8000-000000000000", headers=auth())
    assert status == 404
    resp = await client.post(
        "/api/v1/workflows",
        json={"name": "draft", "definition": {"nodes": [SHAPE], "edges": []}},
        headers=auth(),
    )
    draft = (await resp.json())["data"]
    secret = await set_secret(client, draft["id"])
    status, body, _ = await call(client, draft["id"], secret=secret)
    assert status == 409 and body["error"]["details"]["status"] == "draft"


@pytest.mark.parametrize("header", ["X-Idempotency-Key", "X-Delivery-ID", "X-GitHub-Delivery"])
async def test_a_replayed_delivery_returns_the_first_run(
    client: Client, publish: Publish, header: str
) -> None:
    wf = await publish([SHAPE])
    secret = await set_secret(client, wf["id"])
    first = await call(client, wf["id"], secret=secret, headers={header: "delivery-1"})
    again = await call(client, wf["id"], secret=secret, headers={header: "delivery-1"})
    assert first[0] == 202 and "Idempotent-Replayed" not in first[2]
    assert again[0] == 200 and again[2]["Idempotent-Replayed"] == "true"
    assert again[1]["data"]["id"] == first[1]["data"]["id"]
    other = await call(client, wf["id"], secret=secret, headers={header: "delivery-2"})
    assert other[0] == 202
    assert len(await webhook_runs(client, wf["id"])) == 2


async def test_concurrent_copies_of_a_delivery_start_one_run(
    client: Client, publish: Publish
) -> None:
    wf = await publish([SHAPE])
    secret = await set_secret(client, wf["id"])
    results = await asyncio.gather(
        *(
            call(client, wf["id"], secret=secret, headers={"X-GitHub-Delivery": "d-race"})
            for _ in range(6)
        )
    )
    assert sorted(status for status, _, _ in results) == [200] * 5 + [202]
    assert len({body["data"]["id"] for _, body, _ in results}) == 1
    assert len(await webhook_runs(client, wf["id"])) == 1


async def test_token_and_idempotency_key_agree_with_the_delivery_table(
    client: Client, publish: Publish
) -> None:
    wf = await publish([SHAPE])
    # no secret: the generic middleware replays the first response as it was (202)
    first = await call(client, wf["id"], headers={**auth(), "X-Idempotency-Key": "k"})
    again = await call(client, wf["id"], headers={**auth(), "X-Idempotency-Key": "k"})
    assert first[0] == again[0] == 202 and again[2]["Idempotent-Replayed"] == "true"
    assert again[1]["data"]["id"] == first[1]["data"]["id"]
    # the key reached the delivery table too: the same delivery signed later is the same run
    secret = await set_secret(client, wf["id"])
    signed = await call(client, wf["id"], secret=secret, headers={"X-Idempotency-Key": "k"})
    assert signed[0] == 200 and signed[1]["data"]["id"] == first[1]["data"]["id"]
    # and the other way round: signed first, then with a token (another user's, even)
    one = await call(client, wf["id"], secret=secret, headers={"X-Idempotency-Key": "k2"})
    two = await call(
        client, wf["id"], secret=secret, headers={**auth("bob"), "X-Idempotency-Key": "k2"}
    )
    assert (one[0], two[0]) == (202, 200) and one[1]["data"]["id"] == two[1]["data"]["id"]
    assert len(await webhook_runs(client, wf["id"])) == 2


async def test_bodies_that_cannot_be_input(client: Client, publish: Publish) -> None:
    wf = await publish([SHAPE], input_schema=DAY_SCHEMA)
    secret = await set_secret(client, wf["id"])
    status, body, _ = await call(
        client, wf["id"], {"day": 7}, secret=secret, headers={"X-Delivery-ID": "d"}
    )
    assert status == 422 and body["error"]["details"]["errors"][0]["path"] == "/day"
    status, body, _ = await call(client, wf["id"], [BODY], secret=secret)
    assert status == 422 and body["error"]["details"]["type"] == "array"
    status, body, _ = await call(client, wf["id"], raw=b"{not json", secret=secret)
    assert status == 400 and body["error"]["code"] == "BAD_REQUEST"
    status, body, _ = await call(client, wf["id"], raw=b"", secret=secret)
    assert status == 422, "an empty body is {} and misses the required day"
    assert await webhook_runs(client, wf["id"]) == []
    # a refused delivery id is not used up: the corrected retry starts the run
    assert (await call(client, wf["id"], secret=secret, headers={"X-Delivery-ID": "d"}))[0] == 202


async def test_empty_body_is_empty_input(client: Client, publish: Publish) -> None:
    wf = await publish([{"id": "noop", "type": "transform", "data": {"output": {}}}])
    secret = await set_secret(client, wf["id"])
    status, body, _ = await call(client, wf["id"], raw=b"", secret=secret)
    assert status == 202 and body["data"]["input"] == {}


async def test_secret_endpoints_show_it_once_and_audit_without_it(
    client: Client, publish: Publish
) -> None:
    wf = await publish([SHAPE])
    path = f"/api/v1/workflows/{wf['id']}/webhook-secret"
    resp = await client.post(path, headers=auth())
    created = (await resp.json())["data"]
    assert created["workflow_id"] == wf["id"] and created["created_at"]
    assert (await client.post(path)).status == 401
    assert (await client.post(path, headers=auth("bob"))).status == 404
    assert (await client.delete(path, headers=auth("bob"))).status == 404
    resp = await client.post(path, headers=auth("root", "admin"))  # admins may
    assert resp.status == 201
    rotated = (await resp.json())["data"]["secret"]
    assert (await client.delete(path, headers=auth())).status == 204
    resp = await client.get(f"/api/v1/workflows/{wf['id']}", headers=auth())
    assert created["secret"] not in await resp.text()
    resp = await client.get(f"/api/v1/audit-logs?entity_id={wf['id']}", headers=auth())
    text = await resp.text()
    assert created["secret"] not in text and rotated not in text
    entries = [(e["action"], e["changes"]) for e in (await resp.json())["data"]]
    assert entries[:3] == [
        ("webhook_secret.delete", {}),
        ("webhook_secret.rotate", {"replaced": True}),
        ("webhook_secret.rotate", {"replaced": False}),
    ]


async def test_calls_over_the_rate_limit_are_429(
    config: Config, aiohttp_client: AiohttpClient
) -> None:
    app = create_app(config)
    app[WEBHOOK_LIMITER] = TokenBucketLimiter(rate=0.2, burst=2)
    limited = await aiohttp_client(app)
    ids = []
    for _ in range(2):
        resp = await limited.post(
            "/api/v1/workflows",
            json={"name": "wf", "definition": {"nodes": [SHAPE], "edges": []}},
            headers=auth(),
        )
        ids.append((await resp.json())["data"]["id"])
        await limited.post(f"/api/v1/workflows/{ids[-1]}/publish", headers=auth())
    statuses = [(await call(limited, ids[0], headers=auth()))[0] for _ in range(2)]
    status, body, headers = await call(limited, ids[0], headers=auth())
    assert statuses == [202, 202] and status == 429
    assert body["error"]["code"] == "RATE_LIMITED" and 0 < int(headers["Retry-After"]) <= 5
    assert (await call(limited, ids[1], headers=auth()))[0] == 202, "the limit is per workflow"
    assert len(await webhook_runs(limited, ids[0])) == 2


async def test_the_webhook_endpoint_is_documented(client: Client) -> None:
    spec = await (await client.get("/api/docs/openapi.json")).json()
    operation = spec["paths"]["/api/v1/triggers/webhook/{workflow_id}"]["post"]
    assert {"200", "202", "401", "422", "429"} <= set(operation["responses"])
    assert {} in operation["security"], "signed calls need no token"
    assert "X-Stepwell-Signature" in {p["name"] for p in operation["parameters"]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(rate=2, burst=3, clock=clock)
    assert [limiter.allow("a")[0] for _ in range(3)] == [True] * 3
    assert limiter.allow("a") == (False, 0.5)
    assert limiter.allow("b") == (True, 0.0), "keys have their own buckets"
    clock.now += 0.5
    assert limiter.allow("a") == (True, 0.0)
    assert limiter.allow("a")[0] is False
    clock.now += 10
    assert [limiter.allow("a")[0] for _ in range(4)] == [True] * 3 + [False], "capped at burst"


def test_token_bucket_forgets_idle_keys_and_stays_bounded() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(rate=1, burst=2, max_keys=50, clock=clock)
    for key in range(10):
        limiter.allow(key)
    clock.now += 2  # every bucket has refilled: nothing to remember
    limiter.allow("fresh")
    assert len(limiter) == 1
    for key in range(1000):
        limiter.allow(key)
    assert len(limiter) == 50
    with pytest.raises(ValueError, match="rate"):
        TokenBucketLimiter(rate=0)


async def test_each_app_gets_its_own_default_limiter(config: Config) -> None:
    one, two = create_app(config), create_app(config)
    assert webhook_limiter(one) is webhook_limiter(one)
    assert webhook_limiter(one) is not webhook_limiter(two)
    assert (webhook_limiter(one).rate, webhook_limiter(one).burst) == (10.0, 20)


def test_parse_signature() -> None:
    digest = "ab" * 32
    parsed = parse_signature(f" t=1700000000 , v1={digest.upper()}, v0=old, v1={'cd' * 32}")
    assert parsed.timestamp == "1700000000"
    assert parsed.digests == (digest, "cd" * 32)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "t=1",
        f"v1={'ab' * 32}",
        f"t=x,v1={'ab' * 32}",
        f"t=1,t=2,v1={'ab' * 32}",
        "t=1,v1=zz",
        "t=1;v1=ab",
    ],
)
def test_parse_signature_refuses_malformed_headers(header: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        parse_signature(header)
    assert caught.value.details["reason"] == "malformed"


def test_verify_signature_checks_secret_body_and_age() -> None:
    body, now = b'{"a": 1}', 1_700_000_000
    header = sign("whsec_s", body, now)
    verify_signature("whsec_s", header, body, now=now + 300)
    verify_signature("whsec_s", header, body, now=now - 300)
    for secret, data, at, reason in [
        ("whsec_other", body, now, "mismatch"),
        ("whsec_s", body + b" ", now, "mismatch"),
        ("whsec_s", body, now + 301, "stale"),
        ("whsec_s", body, now - 301, "future"),
    ]:
        with pytest.raises(Unauthorized) as caught:
            verify_signature(secret, header, data, now=at)
        assert caught.value.details["reason"] == reason
