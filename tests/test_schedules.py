"""Schedules through the API, fired by the cron actor under a controllable clock."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from actors.cron import Tick
from runtime.app import create_app
from runtime.clock import Clock
from runtime.config import Config
from runtime.keys import DISPATCHER
from tests.conftest import auth, wait_run

AppClient = TestClient[web.Request, web.Application]
GATE = [{"id": "gate", "type": "approval", "data": {}}]
QUICK = [{"id": "t", "type": "transform", "data": {"output": {"day": "{{ input.day }}"}}}]


class FakeClock(Clock):
    def __init__(self, now: datetime) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current

    def set(self, when: datetime) -> None:
        self.current = when


T0 = datetime(2030, 1, 7, 12, 0, 30, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def app(config: Config, clock: FakeClock, aiohttp_client: AiohttpClient) -> AppClient:
    return await aiohttp_client(create_app(config, clock=clock))


async def publish(app: AppClient, nodes: list[dict[str, Any]], **fields: Any) -> str:
    body = {"name": "wf", "definition": {"nodes": nodes, "edges": []}, **fields}
    resp = await app.post("/api/v1/workflows", json=body, headers=auth())
    wf_id: str = (await resp.json())["data"]["id"]
    resp = await app.post(f"/api/v1/workflows/{wf_id}/publish", headers=auth())
    assert resp.status == 200
    return wf_id


async def schedule(app: AppClient, workflow_id: str, **fields: Any) -> dict[str, Any]:
    body = {"workflow_id": workflow_id, "cron": "* * * * *", **fields}
    resp = await app.post("/api/v1/triggers/schedule", json=body, headers=auth())
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = (await resp.json())["data"]
    return data


async def tick(app: AppClient, clock: FakeClock, when: datetime) -> None:
    """Move the clock and let the cron actor look (as its timer would)."""
    clock.set(when)
    cron = app.app[DISPATCHER].cron
    assert cron is not None
    await cron.ask(Tick(), timeout=10)


async def fires(app: AppClient, schedule_id: str) -> list[dict[str, Any]]:
    resp = await app.get(
        f"/api/v1/triggers/schedules/{schedule_id}/fires?limit=100", headers=auth()
    )
    items: list[dict[str, Any]] = (await resp.json())["data"]
    return sorted(items, key=lambda f: f["fire_time"])


def minute(n: int, second: float = 0.05) -> datetime:
    return datetime(2030, 1, 7, 12, n, tzinfo=UTC) + timedelta(seconds=second)


async def test_schedule_validation(app: AppClient) -> None:
    wf = await publish(app, QUICK)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"cron": "* * *"}, "cron"),
        ({"cron": "99 * * * *"}, "cron"),
        ({"timezone": "Atlantis/Capital"}, "timezone"),
        ({"start_at": "2030-02-01T00:00:00Z", "end_at": "2030-01-01T00:00:00Z"}, "end_at"),
    ]
    for extra, field in cases:
        body = {"workflow_id": wf, "cron": "* * * * *", **extra}
        resp = await app.post("/api/v1/triggers/schedule", json=body, headers=auth())
        assert resp.status == 422, extra
        assert field in (await resp.json())["error"]["details"]["fields"]
    draft = await (await app.post("/api/v1/workflows", json={"name": "d"}, headers=auth())).json()
    body = {"workflow_id": draft["data"]["id"], "cron": "* * * * *"}
    resp = await app.post("/api/v1/triggers/schedule", json=body, headers=auth())
    assert resp.status == 422
    assert "published" in (await resp.json())["error"]["details"]["fields"]["workflow_id"]
    resp = await app.post(
        "/api/v1/triggers/schedule",
        json={"workflow_id": wf, "cron": "* * * * *"},
        headers=auth("bob"),
    )
    assert resp.status == 404
    resp = await app.get("/api/v1/triggers/schedules", headers=auth())
    assert (await resp.json())["pagination"]["total"] == 0


async def test_crud_preview_pause_resume(app: AppClient, clock: FakeClock) -> None:
    wf = await publish(app, QUICK)
    s = await schedule(app, wf, cron="30 2 * * *", timezone="America/New_York")
    assert s["state"] == "active"
    assert s["next_fire_times"][0] == "2030-01-08T02:30:00-05:00"
    assert len(s["next_fire_times"]) == 5
    url = f"/api/v1/triggers/schedules/{s['id']}"
    resp = await app.put(url, json={"cron": "0 9 * * 1-5"}, headers=auth())
    assert (await resp.json())["data"]["next_fire_times"][0] == "2030-01-07T09:00:00-05:00"
    resp = await app.post(f"{url}/pause", headers=auth())
    paused = (await resp.json())["data"]
    assert paused["state"] == "paused" and paused["next_fire_times"] == []
    resp = await app.post(f"{url}/resume", headers=auth())
    assert (await resp.json())["data"]["state"] == "active"
    resp = await app.get(url, headers=auth("bob"))
    assert resp.status == 404
    resp = await app.put(url, json={"timezone": "Nowhere/Land"}, headers=auth())
    assert resp.status == 422
    resp = await app.get("/api/v1/audit-logs?entity_type=schedule", headers=auth())
    actions = [e["action"] for e in (await resp.json())["data"]]
    assert actions == ["resume", "pause", "update", "create"]
    resp = await app.delete(url, headers=auth())
    assert resp.status == 204
    resp = await app.get(url, headers=auth())
    assert resp.status == 404


async def test_fires_once_per_fire_time_with_lateness(app: AppClient, clock: FakeClock) -> None:
    wf = await publish(app, QUICK)
    s = await schedule(app, wf, input={"day": "mon"}, overlap_policy="allow")
    await tick(app, clock, minute(1))
    await tick(app, clock, minute(1, 0.5))  # a second look at the same moment fires nothing
    history = await fires(app, s["id"])
    assert [(f["fire_time"], f["outcome"]) for f in history] == [
        ("2030-01-07T12:01:00+00:00", "started")
    ]
    assert 0 <= history[0]["lateness_ms"] < 100
    run = await wait_run(app, history[0]["run_id"])
    assert run["trigger_type"] == "schedule" and run["status"] == "succeeded"
    assert run["scheduled_for"] == "2030-01-07T12:01:00+00:00"
    assert run["output"] == {"t": {"day": "mon"}}


async def _statuses(app: AppClient, schedule_id: str) -> list[str]:
    return [f["outcome"] for f in await fires(app, schedule_id)]


async def test_overlap_skip_allow_and_cancel_previous(app: AppClient, clock: FakeClock) -> None:
    wf = await publish(app, GATE)
    skip = await schedule(app, wf)
    allow = await schedule(app, wf, overlap_policy="allow")
    cancel = await schedule(app, wf, overlap_policy="cancel_previous")
    await tick(app, clock, minute(1))
    first_cancel = (await fires(app, cancel["id"]))[0]["run_id"]
    await wait_run(app, first_cancel, ("paused",))
    await tick(app, clock, minute(2))
    assert await _statuses(app, skip["id"]) == ["started", "skipped"]
    assert await _statuses(app, allow["id"]) == ["started", "started"]
    assert await _statuses(app, cancel["id"]) == ["started", "started"]
    assert (await wait_run(app, first_cancel))["status"] == "cancelled"


async def test_buffer_one_starts_the_buffered_fire_after_the_active_run(
    app: AppClient, clock: FakeClock
) -> None:
    wf = await publish(app, GATE)
    s = await schedule(app, wf, overlap_policy="buffer_one")
    await tick(app, clock, minute(1))
    await tick(app, clock, minute(2))
    await tick(app, clock, minute(3))
    assert await _statuses(app, s["id"]) == ["started", "buffered", "skipped"]
    first = (await fires(app, s["id"]))[0]["run_id"]
    await wait_run(app, first, ("paused",))
    await app.post(f"/api/v1/runs/{first}/resume", json={"step_id": "gate"}, headers=auth())
    await wait_run(app, first)
    await tick(app, clock, minute(3, 1))
    history = await fires(app, s["id"])
    assert [f["outcome"] for f in history] == ["started", "started", "skipped"]
    second = await wait_run(app, history[1]["run_id"], ("paused",))
    assert second["scheduled_for"] == "2030-01-07T12:02:00+00:00"


async def test_catch_up_after_downtime(app: AppClient, clock: FakeClock) -> None:
    wf = await publish(app, QUICK)
    s = await schedule(app, wf, catchup_window_s=150, overlap_policy="allow")
    await tick(app, clock, minute(5))  # down from 12:00:30 to 12:05
    history = await fires(app, s["id"])
    assert [(f["fire_time"][11:16], f["outcome"]) for f in history] == [
        ("12:01", "missed"),
        ("12:02", "missed"),
        ("12:03", "started"),
        ("12:04", "started"),
        ("12:05", "started"),
    ]
    runs = [await wait_run(app, f["run_id"]) for f in history if f["run_id"]]
    assert [r["scheduled_for"][11:16] for r in runs] == ["12:03", "12:04", "12:05"]


async def test_archived_workflow_stops_the_schedule(app: AppClient, clock: FakeClock) -> None:
    wf = await publish(app, QUICK)
    s = await schedule(app, wf)
    await app.delete(f"/api/v1/workflows/{wf}", headers=auth())
    await tick(app, clock, minute(1))
    resp = await app.get(f"/api/v1/triggers/schedules/{s['id']}", headers=auth())
    data = (await resp.json())["data"]
    assert data["state"] == "disabled" and "archived" in data["disabled_reason"]
    assert await _statuses(app, s["id"]) == ["failed"]
    await tick(app, clock, minute(2))
    assert await _statuses(app, s["id"]) == ["failed"], "a disabled schedule does not fire"


async def test_two_instances_fire_each_second_exactly_once(
    config: Config, aiohttp_client: AiohttpClient
) -> None:
    """Real clock, two apps sharing the database, shards moving between them meanwhile."""
    apps = []
    for node in ("cron-a", "cron-b"):
        cfg = Config(
            database_url=config.database_url,
            jwt_secret=config.jwt_secret,
            node_id=node,
            lease_ttl_s=1.5,
        )
        apps.append(await aiohttp_client(create_app(cfg)))
    wf = await publish(apps[0], QUICK)
    s = await schedule(apps[1], wf, cron="* * * * * *", overlap_policy="allow")
    await asyncio.sleep(4.5)
    await apps[1].post(f"/api/v1/triggers/schedules/{s['id']}/pause", headers=auth())
    history = await fires(apps[0], s["id"])
    times = [datetime.fromisoformat(f["fire_time"]) for f in history]
    assert len(times) >= 3
    assert times == sorted(set(times)), "no fire time twice"
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(times)}
    assert gaps == {1.0}, f"a second was missed: {times}"
    assert all(f["outcome"] == "started" for f in history)
    run_ids = {f["run_id"] for f in history}
    assert len(run_ids) == len(history)
    nodes = {f["node_id"] for f in history}
    assert nodes <= {"cron-a", "cron-b"}
