"""The workflows API against the real database."""

from __future__ import annotations

from typing import Any

from tests.conftest import SIMPLE_DEFINITION, Client, MakeWorkflow, auth

BASE = "/api/v1/workflows"
PATCH_HEADERS = {**auth(), "Content-Type": "application/json-patch+json"}

BROKEN_DEFINITION: dict[str, Any] = {
    "nodes": [
        {"id": "a", "type": "http", "data": {}},
        {"id": "a", "type": "teleport", "data": {}},
        {"id": "b", "type": "transform", "data": {"output": {"x": "{{ steps.[ }}"}}},
    ],
    "edges": [{"source": "a", "target": "ghost"}, {"source": "b", "target": "b"}],
}


async def _json(resp: Any) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json()
    return body


async def test_create_with_defaults(client: Client) -> None:
    resp = await client.post(BASE, json={"name": "first"}, headers=auth())
    assert resp.status == 201
    data = (await _json(resp))["data"]
    assert data["status"] == "draft" and data["version"] == 1
    assert data["workflow_type"] == "general" and data["description"] == ""
    assert data["definition"] == {"nodes": [], "edges": []}
    assert data["family_id"] == data["id"] and data["owner_id"] == "alice"


async def test_create_rejects_bad_input_and_writes_nothing(client: Client) -> None:
    bad_bodies: list[Any] = [
        {},
        {"name": ""},
        {"name": "x", "workflow_type": "space"},
        {"name": "x", "definition": {"nodes": "nope"}},
        {"name": "x", "definition": []},
        {"name": "x", "input_schema": {"type": "bogus"}},
        {"name": "x", "status": "published"},
        {
            "name": "x",
            "definition": {"nodes": [{"id": f"n{i}", "type": "delay"} for i in range(10_000)]},
        },
    ]
    for body in bad_bodies:
        resp = await client.post(BASE, json=body, headers=auth())
        assert resp.status == 422, (body, await resp.text())
        assert (await _json(resp))["error"]["code"] == "VALIDATION_ERROR"
    resp = await client.get(BASE, headers=auth())
    assert (await _json(resp))["pagination"]["total"] == 0


async def test_list_filters_and_paginates(client: Client, make_workflow: MakeWorkflow) -> None:
    for i in range(5):
        await make_workflow(name=f"train-{i}", workflow_type="training")
    await make_workflow(name="predictor", workflow_type="prediction", publish=True)
    await make_workflow("bob", name="train-bob")

    resp = await client.get(BASE + "?limit=2&page=2", headers=auth())
    body = await _json(resp)
    assert body["pagination"] == {"page": 2, "limit": 2, "total": 6}
    assert len(body["data"]) == 2
    resp = await client.get(BASE + "?limit=2&page=9", headers=auth())
    body = await _json(resp)
    assert body["data"] == [] and body["pagination"]["total"] == 6

    resp = await client.get(BASE + "?workflow_type=training&name=TRAIN", headers=auth())
    assert (await _json(resp))["pagination"]["total"] == 5
    resp = await client.get(BASE + "?status=published", headers=auth())
    assert [w["name"] for w in (await _json(resp))["data"]] == ["predictor"]

    for query in ("limit=101", "limit=0", "page=0", "status=gone", "limit=abc", "workflow_type=x"):
        resp = await client.get(f"{BASE}?{query}", headers=auth())
        assert resp.status == 422, query
        assert (await _json(resp))["error"]["details"]["location"] == "querystring"


async def test_get_and_bad_ids(client: Client, make_workflow: MakeWorkflow) -> None:
    wf = await make_workflow()
    resp = await client.get(f"{BASE}/{wf['id']}", headers=auth())
    assert (await _json(resp))["data"]["definition"] == SIMPLE_DEFINITION
    resp = await client.get(f"{BASE}/00000000-0000-0000-0000-000000000000", headers=auth())
    assert resp.status == 404
    resp = await client.get(f"{BASE}/not-a-uuid", headers=auth())
    assert resp.status == 422


async def test_update_draft_then_published_is_409(
    client: Client, make_workflow: MakeWorkflow
) -> None:
    wf = await make_workflow()
    url = f"{BASE}/{wf['id']}"
    resp = await client.put(url, json={"description": "v2", "name": "renamed"}, headers=auth())
    assert resp.status == 200
    data = (await _json(resp))["data"]
    assert (data["name"], data["description"]) == ("renamed", "v2")
    resp = await client.put(url, json={"workflow_type": "nope"}, headers=auth())
    assert resp.status == 422

    await client.post(f"{url}/publish", headers=auth())
    resp = await client.put(url, json={"description": "v3"}, headers=auth())
    assert resp.status == 409
    assert "published" in (await _json(resp))["error"]["message"]
    resp = await client.get(url, headers=auth())
    assert (await _json(resp))["data"]["description"] == "v2"


async def test_json_patch(client: Client, make_workflow: MakeWorkflow) -> None:
    wf = await make_workflow()
    url = f"{BASE}/{wf['id']}"
    ops = [
        {"op": "test", "path": "/name", "value": "wf"},
        {"op": "replace", "path": "/description", "value": "patched"},
        {
            "op": "add",
            "path": "/definition/nodes/-",
            "value": {"id": "wait", "type": "delay", "data": {"seconds": 5}},
        },
        {
            "op": "add",
            "path": "/definition/edges/-",
            "value": {"source": "shape", "target": "wait"},
        },
    ]
    resp = await client.patch(url, json=ops, headers=PATCH_HEADERS)
    assert resp.status == 200, await resp.text()
    data = (await _json(resp))["data"]
    assert data["description"] == "patched"
    assert [n["id"] for n in data["definition"]["nodes"]] == ["fetch", "shape", "wait"]


async def test_json_patch_errors_change_nothing(
    client: Client, make_workflow: MakeWorkflow
) -> None:
    wf = await make_workflow()
    url = f"{BASE}/{wf['id']}"
    cases: list[tuple[Any, int]] = [
        ([{"op": "test", "path": "/name", "value": "other"}], 409),
        ({"op": "replace"}, 422),
        ([{"op": "jump", "path": "/name"}], 422),
        ([{"op": "replace", "path": "/nope/deeper", "value": 1}], 422),
        ([{"op": "replace", "path": "/workflow_type", "value": "space"}], 422),
        ([{"op": "add", "path": "/status", "value": "published"}], 422),
        ([{"op": "remove", "path": "/name"}], 422),
        ([{"op": "replace", "path": "/definition/nodes", "value": 7}], 422),
    ]
    for ops, status in cases:
        resp = await client.patch(url, json=ops, headers=PATCH_HEADERS)
        assert resp.status == status, (ops, await resp.text())
    resp = await client.patch(url, json=[], headers=auth())
    assert resp.status == 415
    resp = await client.patch(url, data=b"[{", headers=PATCH_HEADERS)
    assert resp.status == 400
    resp = await client.get(url, headers=auth())
    data = (await _json(resp))["data"]
    assert data["name"] == "wf" and data["definition"] == SIMPLE_DEFINITION

    await client.post(f"{url}/publish", headers=auth())
    resp = await client.patch(
        url, json=[{"op": "replace", "path": "/name", "value": "x"}], headers=PATCH_HEADERS
    )
    assert resp.status == 409


async def test_publish_lists_every_error(client: Client, make_workflow: MakeWorkflow) -> None:
    wf = await make_workflow(definition=BROKEN_DEFINITION)
    resp = await client.post(f"{BASE}/{wf['id']}/publish", headers=auth())
    assert resp.status == 422
    errors = (await _json(resp))["error"]["details"]["errors"]
    paths = " ".join(e["path"] for e in errors)
    codes = {e["code"] for e in errors}
    assert len(codes) >= 5, errors
    assert "/nodes/1" in paths and "/edges/0" in paths
    resp = await client.get(f"{BASE}/{wf['id']}", headers=auth())
    assert (await _json(resp))["data"]["status"] == "draft"


async def test_publish_twice_is_409(client: Client, make_workflow: MakeWorkflow) -> None:
    wf = await make_workflow(publish=True)
    assert wf["status"] == "published" and wf["published_at"]
    resp = await client.post(f"{BASE}/{wf['id']}/publish", headers=auth())
    assert resp.status == 409


async def test_validate(client: Client, make_workflow: MakeWorkflow) -> None:
    wf = await make_workflow()
    url = f"{BASE}/{wf['id']}/validate"
    resp = await client.post(url, headers=auth())
    assert (await _json(resp))["data"] == {"valid": True, "errors": []}
    resp = await client.post(url, json={"definition": BROKEN_DEFINITION}, headers=auth())
    result = (await _json(resp))["data"]
    assert result["valid"] is False and len(result["errors"]) >= 5
    resp = await client.post(url, json={"definition": "x"}, headers=auth())
    assert resp.status == 422


async def test_delete_draft_and_archive_published(
    client: Client, make_workflow: MakeWorkflow
) -> None:
    draft = await make_workflow()
    resp = await client.delete(f"{BASE}/{draft['id']}", headers=auth())
    assert resp.status == 204
    resp = await client.get(f"{BASE}/{draft['id']}", headers=auth())
    assert resp.status == 404

    live = await make_workflow(publish=True)
    resp = await client.delete(f"{BASE}/{live['id']}", headers=auth())
    assert resp.status == 200
    data = (await _json(resp))["data"]
    assert data["status"] == "archived" and data["archived_at"]
    resp = await client.delete(f"{BASE}/{live['id']}", headers=auth())
    assert resp.status == 200
    resp = await client.post(f"{BASE}/{live['id']}/publish", headers=auth())
    assert resp.status == 409


async def test_duplicate_and_versions(client: Client, make_workflow: MakeWorkflow) -> None:
    v1 = await make_workflow(name="family", publish=True)
    resp = await client.post(f"{BASE}/{v1['id']}/duplicate", headers=auth())
    assert resp.status == 201
    v2 = (await _json(resp))["data"]
    assert (v2["version"], v2["status"], v2["family_id"]) == (2, "draft", v1["id"])
    assert v2["name"] == "family" and v2["definition"] == v1["definition"]
    resp = await client.post(f"{BASE}/{v1['id']}/duplicate", headers=auth())
    v3 = (await _json(resp))["data"]
    assert v3["version"] == 3

    resp = await client.get(f"{BASE}/{v2['id']}/versions", headers=auth())
    body = await _json(resp)
    assert [w["version"] for w in body["data"]] == [3, 2, 1]
    resp = await client.get(f"{BASE}/{v2['id']}/versions", headers=auth("bob"))
    assert resp.status == 404
    resp = await client.post(f"{BASE}/{v2['id']}/duplicate", headers=auth("bob"))
    assert resp.status == 404


async def test_step_catalog(client: Client) -> None:
    resp = await client.get("/api/v1/catalog/steps", headers=auth())
    assert resp.status == 200
    steps = {s["type"]: s for s in (await _json(resp))["data"]}
    assert set(steps) >= {
        "http",
        "agent",
        "approval",
        "delay",
        "condition",
        "transform",
        "subworkflow",
        "dataset_profile",
        "train",
        "evaluate",
        "deploy",
        "predict",
        "batch_predict",
    }
    http = steps["http"]
    assert {"name", "description", "category", "config_schema", "output_schema", "example"} <= set(
        http
    )
    assert "url" in http["config_schema"]["properties"]
    resp = await client.get("/api/v1/catalog/steps")
    assert resp.status == 401


async def test_audit_log_records_mutations(client: Client, make_workflow: MakeWorkflow) -> None:
    wf = await make_workflow()
    await client.put(f"{BASE}/{wf['id']}", json={"description": "new"}, headers=auth())
    await client.post(f"{BASE}/{wf['id']}/publish", headers=auth())
    await make_workflow("bob")

    resp = await client.get(
        f"/api/v1/audit-logs?entity_type=workflow&entity_id={wf['id']}", headers=auth()
    )
    entries = (await _json(resp))["data"]
    assert [e["action"] for e in entries] == ["publish", "update", "create"]
    assert entries[1]["changes"] == {"description": {"from": "", "to": "new"}}
    assert all(e["user_id"] == "alice" for e in entries)

    resp = await client.get("/api/v1/audit-logs?user_id=bob", headers=auth())
    assert (await _json(resp))["data"] == [], "alice does not see bob's entries"
    resp = await client.get("/api/v1/audit-logs?user_id=bob", headers=auth("root", "admin"))
    assert (await _json(resp))["pagination"]["total"] == 1
    resp = await client.get(
        "/api/v1/audit-logs?since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z", headers=auth()
    )
    assert (await _json(resp))["data"] == []
    for query in ("since=yesterday", "since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z"):
        resp = await client.get(f"/api/v1/audit-logs?{query}", headers=auth())
        assert resp.status == 422, query
