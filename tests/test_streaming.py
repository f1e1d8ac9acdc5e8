"""Live streaming: WebSocket snapshot + gap-free events, reconnects, SSE, other processes."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from runtime.app import create_app
from runtime.config import Config
from runtime.keys import DISPATCHER
from tests.conftest import Client, Publish, auth, events_of, start_run, token_for, wait_run

GATE = {"id": "gate", "type": "approval", "data": {}}
TAIL = [{"id": f"t{i}", "type": "transform", "data": {"output": {"i": i}}} for i in range(3)]
EDGES = [
    {"source": "gate", "target": "t0"},
    {"source": "t0", "target": "t1"},
    {"source": "t1", "target": "t2"},
]


async def _receive_all(ws: Any) -> list[dict[str, Any]]:
    messages = []
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            messages.append(msg.json())
    return messages


async def _paused_run(client: Client, publish: Publish) -> dict[str, Any]:
    wf = await publish([GATE, *TAIL], EDGES)
    run = await start_run(client, wf["id"])
    return await wait_run(client, run["id"], ("paused",))


async def test_snapshot_then_every_event_once_in_order(client: Client, publish: Publish) -> None:
    run = await _paused_run(client, publish)
    ws = await client.ws_connect(f"/ws/runs/{run['id']}?token={token_for('alice')}")
    snapshot = await ws.receive_json()
    assert snapshot["type"] == "snapshot"
    assert snapshot["run"]["status"] == "paused"
    assert snapshot["step_statuses"] == {"gate": "waiting"}
    seq = snapshot["seq"]
    assert seq == run["last_seq"]

    resp = await client.post(
        f"/api/v1/runs/{run['id']}/resume", json={"step_id": "gate"}, headers=auth()
    )
    assert resp.status == 202
    events = await _receive_all(ws)
    assert ws.close_code == 1000
    assert [e["seq"] for e in events] == list(range(seq + 1, seq + 1 + len(events)))
    assert events[-1]["event"] == "run.succeeded"
    stored = await events_of(client, run["id"])
    assert [e["seq"] for e in stored] == list(range(1, seq + len(events) + 1))
    assert events == stored[seq:], "what the client saw is exactly what is stored"


async def test_late_joiner_and_reconnect_with_after_seq(client: Client, publish: Publish) -> None:
    wf = await publish(TAIL, EDGES[1:])
    done = await wait_run(client, (await start_run(client, wf["id"]))["id"])
    url = f"/ws/runs/{done['id']}"
    ws = await client.ws_connect(url, headers=auth())
    messages = await _receive_all(ws)
    assert [m["type"] for m in messages] == ["snapshot"]
    assert messages[0]["run"]["status"] == "succeeded" and messages[0]["seq"] == done["last_seq"]

    ws = await client.ws_connect(f"{url}?after_seq=2", headers=auth())
    events = await _receive_all(ws)
    assert [e["seq"] for e in events] == list(range(3, done["last_seq"] + 1))
    assert all(e["type"] == "event" for e in events)


async def test_socket_auth_and_bad_input(client: Client, publish: Publish) -> None:
    run = await _paused_run(client, publish)
    url = f"/ws/runs/{run['id']}"
    for path, headers, status in [
        (url, {}, 401),
        (f"{url}?token=garbage", {}, 401),
        (url, auth("bob"), 404),
        (f"{url}?after_seq=-1", auth(), 422),
        ("/ws/runs/not-a-uuid", auth(), 422),
    ]:
        resp = await client.get(path, headers=headers)
        assert resp.status == status, path
        assert (await resp.json())["error"]["request_id"]
    ws = await client.ws_connect(url, headers=auth())
    assert (await ws.receive_json())["type"] == "snapshot"
    await ws.send_str("not json")
    reply = await ws.receive_json()
    assert reply["type"] == "error" and reply["error"]["code"] == "VALIDATION_ERROR"
    await ws.send_json({"type": "ping"})
    assert (await ws.receive_json()) == {"type": "pong"}
    bus = client.app[DISPATCHER].bus
    assert bus.watcher_count() == 1
    await ws.close()
    for _ in range(100):
        if bus.watcher_count() == 0:
            break
        await asyncio.sleep(0.01)
    assert bus.watcher_count() == 0, "a closed socket releases its subscription"


async def test_sse_resumes_from_last_event_id(client: Client, publish: Publish) -> None:
    wf = await publish(TAIL, EDGES[1:])
    done = await wait_run(client, (await start_run(client, wf["id"]))["id"])
    resp = await client.get(
        f"/api/v1/runs/{done['id']}/events/stream", headers={**auth(), "Last-Event-ID": "3"}
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    text = await resp.text()
    ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    assert ids == list(range(4, done["last_seq"] + 1))
    resp = await client.get(
        f"/api/v1/runs/{done['id']}/events/stream", headers={**auth(), "Last-Event-ID": "x"}
    )
    assert resp.status == 422


async def test_watching_from_another_process(
    client: Client, publish: Publish, config: Config, aiohttp_client: AiohttpClient
) -> None:
    """The run executes on one app; the watcher sits on another sharing the database."""
    other: TestClient[web.Request, web.Application] = await aiohttp_client(
        create_app(
            Config(
                database_url=config.database_url, jwt_secret=config.jwt_secret, node_id="watcher"
            )
        )
    )
    run = await _paused_run(client, publish)
    ws = await other.ws_connect(f"/ws/runs/{run['id']}", headers=auth())
    snapshot = await ws.receive_json()
    assert snapshot["step_statuses"] == {"gate": "waiting"}
    await client.post(f"/api/v1/runs/{run['id']}/resume", json={"step_id": "gate"}, headers=auth())
    events = await _receive_all(ws)
    assert [e["seq"] for e in events] == list(
        range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(events))
    )
    assert events[-1]["event"] == "run.succeeded"
    await other.close()
