"""The model registry API: models, versions, aliases, lineage and ownership, on a real database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from tests.conftest import Client, auth

BASE = "/api/v1/models"
ADMIN = auth("root", role="admin")
URI = "gs://ml-artifacts/churn/model.joblib"

# The datasets API is written alongside this one, so its rows are made directly.
INSERT_DATASET = """
INSERT INTO datasets (owner_id, name, created_by) VALUES ($1, $2, $1) RETURNING id
"""
INSERT_DATASET_VERSION = """
INSERT INTO dataset_versions (dataset_id, version, files, total_digest, size_bytes, created_by)
VALUES ($1, $2, '[]'::jsonb, 'sha256:0', 0, 'test') RETURNING id
"""

MakeModel = Callable[..., Awaitable[dict[str, Any]]]
MakeVersion = Callable[..., Awaitable[dict[str, Any]]]
MakeDatasetVersion = Callable[..., Awaitable[tuple[str, str]]]


async def _json(resp: Any) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json()
    return body


@pytest.fixture
def make_model(client: Client) -> MakeModel:
    """Register a model through the API and return its JSON."""

    async def make(user: str = "alice", **fields: Any) -> dict[str, Any]:
        body = {"name": "churn", "model_type": "classification", "framework": "scikit-learn"}
        resp = await client.post(BASE, json={**body, **fields}, headers=auth(user))
        assert resp.status == 201, await resp.text()
        data: dict[str, Any] = (await _json(resp))["data"]
        return data

    return make


@pytest.fixture
def make_version(client: Client) -> MakeVersion:
    """Add a version to a model through the API and return its JSON."""

    async def make(model_id: str, headers: dict[str, str] | None = None, **fields: Any) -> Any:
        body = {"artifact_uri": URI, **fields}
        url = f"{BASE}/{model_id}/versions"
        resp = await client.post(url, json=body, headers=headers or auth())
        assert resp.status == 201, await resp.text()
        return (await _json(resp))["data"]

    return make


@pytest.fixture
def make_dataset_version(database_url: str) -> MakeDatasetVersion:
    """A dataset owned by `owner` with version 1; returns (dataset_id, dataset_version_id)."""

    async def make(owner: str = "alice") -> tuple[str, str]:
        conn = await asyncpg.connect(database_url)
        try:
            dataset_id = await conn.fetchval(INSERT_DATASET, owner, "customers")
            version_id = await conn.fetchval(INSERT_DATASET_VERSION, dataset_id, 1)
        finally:
            await conn.close()
        return str(dataset_id), str(version_id)

    return make


async def audit_of(client: Client, model_id: str, user: str = "alice") -> list[dict[str, Any]]:
    """The model's audit entries, oldest first."""
    url = f"/api/v1/audit-logs?entity_type=model&entity_id={model_id}&limit=100"
    entries = (await _json(await client.get(url, headers=auth(user))))["data"]
    return list(reversed(entries))


def moves(entries: list[dict[str, Any]]) -> list[tuple[str, int | None, int | None]]:
    return [
        (e["changes"]["alias"], e["changes"]["version"]["from"], e["changes"]["version"]["to"])
        for e in entries
        if e["action"] == "alias.move"
    ]


async def test_create_and_get(client: Client, make_model: MakeModel) -> None:
    model = await make_model(description="predicts churn")
    assert (model["status"], model["owner_id"], model["description"]) == (
        "active",
        "alice",
        "predicts churn",
    )
    assert model["aliases"] == {} and model["latest_version"] is None
    resp = await client.get(f"{BASE}/{model['id']}", headers=auth())
    assert (await _json(resp))["data"] == model
    assert [e["action"] for e in await audit_of(client, model["id"])] == ["create"]
    resp = await client.get(f"{BASE}/00000000-0000-0000-0000-000000000000", headers=auth())
    assert resp.status == 404
    resp = await client.get(f"{BASE}/not-a-uuid", headers=auth())
    assert resp.status == 422


async def test_bad_models_are_422_and_write_nothing(client: Client) -> None:
    good = {"name": "m", "model_type": "regression", "framework": "jax"}
    bodies: list[Any] = [
        {},
        {**good, "name": ""},
        {**good, "name": "x" * 201},
        {**good, "model_type": "ranking"},
        {**good, "framework": "keras"},
        {k: v for k, v in good.items() if k != "framework"},
        {**good, "status": "archived"},
        [good],
    ]
    for body in bodies:
        resp = await client.post(BASE, json=body, headers=auth())
        assert resp.status == 422, (body, await resp.text())
        assert (await _json(resp))["error"]["code"] == "VALIDATION_ERROR"
    resp = await client.post(BASE, json={**good, "model_type": "ranking"}, headers=auth())
    message = str((await _json(resp))["error"]["details"])
    assert all(t in message for t in ("classification", "regression", "clustering", "generation"))
    resp = await client.post(BASE, json={**good, "framework": "keras"}, headers=auth())
    message = str((await _json(resp))["error"]["details"])
    assert all(f in message for f in ("tensorflow", "pytorch", "scikit-learn", "jax"))
    resp = await client.get(BASE + "?status=all", headers=auth())
    assert (await _json(resp))["pagination"]["total"] == 0
    resp = await client.get("/api/v1/audit-logs", headers=auth())
    assert (await _json(resp))["data"] == []


async def test_list_filters_and_paginates(client: Client, make_model: MakeModel) -> None:
    for i in range(4):
        await make_model(name=f"Churn-{i}")
    await make_model(name="prices", model_type="regression", framework="pytorch")
    old = await make_model(name="churn-old")
    await client.delete(f"{BASE}/{old['id']}", headers=auth())
    await make_model("bob", name="churn-bob")

    async def names(query: str) -> list[str]:
        resp = await client.get(f"{BASE}?{query}", headers=auth())
        assert resp.status == 200, await resp.text()
        return sorted(m["name"] for m in (await _json(resp))["data"])

    assert len(await names("")) == 5
    assert await names("name=CHURN") == [f"Churn-{i}" for i in range(4)]
    assert await names("model_type=regression") == await names("framework=pytorch") == ["prices"]
    assert await names("status=archived") == ["churn-old"]
    assert len(await names("status=all&name=churn")) == 5
    body = await _json(await client.get(f"{BASE}?limit=2&page=3", headers=auth()))
    assert body["pagination"] == {"page": 3, "limit": 2, "total": 5} and len(body["data"]) == 1
    for query in ("status=deleted", "model_type=x", "framework=keras", "limit=101", "page=0"):
        resp = await client.get(f"{BASE}?{query}", headers=auth())
        assert resp.status == 422, query
    resp = await client.get(BASE + "?status=all", headers=ADMIN)
    assert (await _json(resp))["pagination"]["total"] == 7


async def test_archive_keeps_model_readable_but_closed(
    client: Client, make_model: MakeModel, make_version: MakeVersion
) -> None:
    model = await make_model()
    await make_version(model["id"], aliases=["champion"])
    url = f"{BASE}/{model['id']}"
    for _ in range(2):
        resp = await client.delete(url, headers=auth())
        assert resp.status == 200
        data = (await _json(resp))["data"]
        assert data["status"] == "archived" and data["archived_at"]
    assert [e["action"] for e in await audit_of(client, model["id"])].count("archive") == 1
    resp = await client.post(f"{url}/versions", json={"artifact_uri": URI}, headers=auth())
    assert resp.status == 409
    assert "archived" in (await _json(resp))["error"]["message"]
    resp = await client.put(f"{url}/versions/1", json={"aliases": []}, headers=auth())
    assert resp.status == 409
    resp = await client.get(f"{url}/versions/champion", headers=auth())
    assert (await _json(resp))["data"]["aliases"] == ["champion"]
    resp = await client.get(f"{url}/versions", headers=auth())
    assert (await _json(resp))["pagination"]["total"] == 1


async def test_versions_are_numbered_and_listed_newest_first(
    client: Client, make_model: MakeModel, make_version: MakeVersion
) -> None:
    model = await make_model(framework="pytorch")
    first = await make_version(
        model["id"],
        metrics={"accuracy": 0.9, "epochs": 3},
        parameters={"lr": 0.01, "layers": [64, 32]},
        metadata={"team": "growth"},
        description="baseline",
    )
    assert (first["version"], first["framework"], first["metrics"]) == (
        1,
        "pytorch",
        {"accuracy": 0.9, "epochs": 3},
    )
    assert first["parameters"]["layers"] == [64, 32] and first["aliases"] == []
    for uri in ("s3://bucket/m.pt", "file:///models/m.pt", "https://models.example.com/m.pt"):
        await make_version(model["id"], artifact_uri=uri, framework="jax")
    body = await _json(await client.get(f"{BASE}/{model['id']}/versions?limit=3", headers=auth()))
    assert [v["version"] for v in body["data"]] == [4, 3, 2]
    assert body["pagination"]["total"] == 4 and body["data"][0]["framework"] == "jax"
    resp = await client.get(f"{BASE}/{model['id']}/versions/1", headers=auth())
    assert (await _json(resp))["data"] == first
    detail = (await _json(await client.get(f"{BASE}/{model['id']}", headers=auth())))["data"]
    assert detail["latest_version"] == 4
    for ref in ("5", "0", "99999999999", "nobody"):
        resp = await client.get(f"{BASE}/{model['id']}/versions/{ref}", headers=auth())
        assert resp.status == 404, ref
    resp = await client.get(f"{BASE}/{model['id']}/versions/Champion", headers=auth())
    assert resp.status == 422


async def test_bad_versions_are_422_and_write_nothing(
    client: Client, make_model: MakeModel
) -> None:
    model = await make_model()
    url = f"{BASE}/{model['id']}/versions"
    bad: list[dict[str, Any]] = [
        {},
        *({"artifact_uri": u} for u in ("ftp://h/m", "model.pkl", "gs://", "file:m", "s3://b/a b")),
        {"artifact_uri": URI, "framework": "keras"},
        {"artifact_uri": URI, "metrics": {"accuracy": "0.9"}},
        {"artifact_uri": URI, "metrics": {"ok": True}},
        {"artifact_uri": URI, "metrics": {"nested": {"a": 1}}},
        {"artifact_uri": URI, "metrics": [1]},
        *({"artifact_uri": URI, "aliases": [a]} for a in ("Champion", "-x", "123", "a" * 65, "")),
        {"artifact_uri": URI, "aliases": "champion"},
        {"artifact_uri": URI, "dataset_version_id": "00000000-0000-0000-0000-000000000000"},
        {"artifact_uri": URI, "training_job_id": "job-1"},
        {"artifact_uri": URI, "version": 7},
    ]
    for body in bad:
        resp = await client.post(url, json=body, headers=auth())
        assert resp.status == 422, (body, await resp.text())
    headers = {**auth(), "Content-Type": "application/json"}
    for raw in (b'{"x": NaN}', b'{"x": Infinity}'):
        body_text = b'{"artifact_uri": "gs://b/m", "metrics": ' + raw + b"}"
        resp = await client.post(url, data=body_text, headers=headers)
        assert resp.status == 422, await resp.text()
    for field in ("parameters", "metadata"):
        body_text = b'{"artifact_uri": "gs://b/m", "%s": {"x": NaN}}' % field.encode()
        resp = await client.post(url, data=body_text, headers=headers)
        assert resp.status == 422, await resp.text()
    assert (await _json(await client.get(url, headers=auth())))["pagination"]["total"] == 0
    assert [e["action"] for e in await audit_of(client, model["id"])] == ["create"]


async def test_aliases_move_resolve_and_are_audited(
    client: Client, make_model: MakeModel, make_version: MakeVersion
) -> None:
    model = await make_model()
    url = f"{BASE}/{model['id']}/versions"
    await make_version(model["id"], aliases=["champion"])
    await make_version(model["id"], aliases=["challenger", "challenger"])

    resp = await client.put(
        f"{url}/2", json={"aliases": ["champion", "challenger"]}, headers=auth()
    )
    assert resp.status == 200, await resp.text()
    assert (await _json(resp))["data"]["aliases"] == ["challenger", "champion"]
    assert (await _json(await client.get(f"{url}/1", headers=auth())))["data"]["aliases"] == []
    champion = (await _json(await client.get(f"{url}/champion", headers=auth())))["data"]
    assert champion["version"] == 2
    detail = (await _json(await client.get(f"{BASE}/{model['id']}", headers=auth())))["data"]
    assert detail["aliases"] == {"champion": 2, "challenger": 2}

    body = {"aliases": ["challenger"], "metrics": {"auc": 0.7}, "description": "tuned"}
    resp = await client.put(f"{url}/champion", json=body, headers=auth())
    data = (await _json(resp))["data"]
    assert (data["version"], data["aliases"], data["metrics"]) == (2, ["challenger"], {"auc": 0.7})
    assert (await client.get(f"{url}/champion", headers=auth())).status == 404
    resp = await client.put(f"{url}/1", json={"aliases": ["Bad Name"]}, headers=auth())
    assert resp.status == 422

    entries = await audit_of(client, model["id"])
    assert moves(entries) == [
        ("champion", None, 1),
        ("challenger", None, 2),
        ("champion", 1, 2),
        ("champion", 2, None),
    ]
    update = next(e for e in entries if e["action"] == "version.update")
    assert update["changes"]["version"] == 2
    assert update["changes"]["description"] == {"from": "", "to": "tuned"}


async def test_lineage_both_ways(
    client: Client,
    make_model: MakeModel,
    make_version: MakeVersion,
    make_dataset_version: MakeDatasetVersion,
) -> None:
    dataset_id, dataset_version_id = await make_dataset_version("alice")
    job = "3b241101-e2bb-4255-8caf-4136c566a962"
    model = await make_model()
    made = await make_version(
        model["id"], dataset_version_id=dataset_version_id, training_job_id=job
    )
    assert (made["dataset_version_id"], made["training_job_id"]) == (dataset_version_id, job)
    assert (made["dataset_id"], made["dataset_version"]) == (dataset_id, 1)
    await make_version(model["id"])  # no lineage: not listed below

    bobs = await make_model("bob", name="bob-model")
    resp = await client.post(
        f"{BASE}/{bobs['id']}/versions",
        json={"artifact_uri": URI, "dataset_version_id": dataset_version_id},
        headers=auth("bob"),
    )
    assert resp.status == 422  # alice's data is not bob's to cite
    await make_version(bobs["id"], headers=ADMIN, dataset_version_id=dataset_version_id)

    url = f"/api/v1/datasets/{dataset_id}/versions/1/model-versions"
    body = await _json(await client.get(url, headers=auth()))
    assert [(v["model_name"], v["version"]) for v in body["data"]] == [("churn", 1)]
    assert body["pagination"]["total"] == 1
    admin_view = await _json(await client.get(url, headers=ADMIN))
    assert {v["model_name"] for v in admin_view["data"]} == {"churn", "bob-model"}
    assert (await client.get(url, headers=auth("bob"))).status == 404
    missing = f"/api/v1/datasets/{dataset_id}/versions/2/model-versions"
    assert (await client.get(missing, headers=auth())).status == 404
    bad = f"/api/v1/datasets/{dataset_id}/versions/x/model-versions"
    assert (await client.get(bad, headers=auth())).status == 422


async def test_other_users_models_are_404(
    client: Client, make_model: MakeModel, make_version: MakeVersion
) -> None:
    model = await make_model()
    await make_version(model["id"], aliases=["champion"])
    url = f"{BASE}/{model['id']}"
    bob = auth("bob")
    attempts = [
        client.get(url, headers=bob),
        client.delete(url, headers=bob),
        client.get(f"{url}/versions", headers=bob),
        client.post(f"{url}/versions", json={"artifact_uri": URI}, headers=bob),
        client.get(f"{url}/versions/1", headers=bob),
        client.get(f"{url}/versions/champion", headers=bob),
        client.put(f"{url}/versions/1", json={"aliases": []}, headers=bob),
    ]
    for attempt in attempts:
        resp = await attempt
        assert resp.status == 404, await resp.text()
        assert (await _json(resp))["error"]["code"] == "NOT_FOUND"
    assert (await _json(await client.get(BASE, headers=bob)))["data"] == []
    detail = (await _json(await client.get(url, headers=ADMIN)))["data"]
    assert (detail["status"], detail["aliases"], detail["latest_version"]) == (
        "active",
        {"champion": 1},
        1,
    )


async def test_concurrent_versions_get_distinct_numbers(
    client: Client, make_model: MakeModel, make_version: MakeVersion
) -> None:
    model = await make_model()
    made = await asyncio.gather(*(make_version(model["id"]) for _ in range(5)))
    assert sorted(v["version"] for v in made) == [1, 2, 3, 4, 5]

    headers = {**auth(), "X-Idempotency-Key": "v6"}
    url = f"{BASE}/{model['id']}/versions"
    first = await client.post(url, json={"artifact_uri": URI}, headers=headers)
    again = await client.post(url, json={"artifact_uri": URI}, headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert (await _json(first))["data"]["version"] == (await _json(again))["data"]["version"] == 6
