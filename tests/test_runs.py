"""Runs through the API: graphs, branches, retries, timeouts, commands."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime
from typing import Any

import pytest

from actors.run_rounds import MAX_ROUNDS
from runtime.keys import DB_POOL, DISPATCHER
from runtime.shards import Lease
from tests.conftest import Client, Publish, auth, events_of, start_run, wait_run
from tests.outside import Outside


def http(node_id: str, url: str, **extra: Any) -> dict[str, Any]:
    data = {"url": url, **extra.pop("data", {})}
    return {"id": node_id, "type": "http", "data": data, **extra}


def edge(source: str, target: str, condition: str | None = None) -> dict[str, Any]:
    return {"source": source, "target": target, **({"condition": condition} if condition else {})}


async def test_parallel_branches_join_and_templates(
    client: Client, publish: Publish, outside: tuple[Outside, str]
) -> None:
    world, base = outside
    nodes = [
        http("start", f"{base}/ok/start", data={"method": "POST", "body": {"n": "{{ input.n }}"}}),
        http("left", f"{base}/slow/left?s=0.3"),
        http("right", f"{base}/slow/right?s=0.3"),
        {
            "id": "join",
            "type": "transform",
            "data": {
                "output": {
                    "n": "{{ steps.start.output.body.echo.n }}",
                    "both": "{{ [steps.left.status, steps.right.status] }}",
                }
            },
        },
    ]
    edges = [
        edge("start", "left"),
        edge("start", "right"),
        edge("left", "join"),
        edge("right", "join"),
    ]
    wf = await publish(nodes, edges)
    run = await start_run(client, wf["id"], {"n": 7})
    assert run["status"] == "pending" and run["trigger_type"] == "api"
    done = await wait_run(client, run["id"])
    assert done["status"] == "succeeded", done
    assert done["output"] == {"join": {"n": 7, "both": ["succeeded", "succeeded"]}}
    assert done["context"]["input"] == {"n": 7}

    resp = await client.get(f"/api/v1/runs/{run['id']}/steps", headers=auth())
    steps = {s["step_id"]: s for s in (await resp.json())["data"]}
    left, right = steps["left"], steps["right"]
    # the branches overlapped: each started before the other finished
    assert left["started_at"] < right["completed_at"] and right["started_at"] < left["completed_at"]
    assert steps["join"]["started_at"] >= max(left["completed_at"], right["completed_at"])
    assert world.keys["/ok/start"] == [f"{run['id']}:start"]


async def test_condition_takes_one_branch_and_skips_the_other(
    client: Client, publish: Publish
) -> None:
    nodes = [
        {"id": "check", "type": "condition", "data": {"expression": "input.score > `0.8`"}},
        {"id": "deploy", "type": "transform", "data": {"output": {"did": "deploy"}}},
        {"id": "alert", "type": "transform", "data": {"output": {"did": "alert"}}},
        {"id": "after_alert", "type": "transform", "data": {"output": {"did": "more"}}},
        {"id": "end", "type": "transform", "data": {"output": {"ok": True}}},
    ]
    edges = [
        edge("check", "deploy", "true"),
        edge("check", "alert", "false"),
        edge("alert", "after_alert"),
        edge("deploy", "end"),
        edge("after_alert", "end"),
    ]
    wf = await publish(nodes, edges)
    for score, taken, skipped in ((0.9, "deploy", "alert"), (0.1, "alert", "deploy")):
        run = await start_run(client, wf["id"], {"score": score})
        done = await wait_run(client, run["id"])
        assert done["status"] == "succeeded"
        statuses = done["step_statuses"]
        assert statuses[taken] == "succeeded" and statuses[skipped] == "skipped"
        assert statuses["end"] == "succeeded"
    assert statuses["after_alert"] == "succeeded"


async def test_retry_succeeds_after_transient_failures(
    client: Client, publish: Publish, outside: tuple[Outside, str]
) -> None:
    world, base = outside
    retry = {"max_attempts": 3, "initial_interval_s": 0.05, "backoff": 2}
    wf = await publish([http("call", f"{base}/flaky/a?fail=2", retry=retry)])
    run = await start_run(client, wf["id"])
    done = await wait_run(client, run["id"])
    assert done["status"] == "succeeded"
    assert world.calls["/flaky/a"] == 3
    assert set(world.keys["/flaky/a"]) == {f"{run['id']}:call"}, "one key for every attempt"
    names = [e["event"] for e in await events_of(client, run["id"])]
    assert names.count("step.retrying") == 2
    resp = await client.get(f"/api/v1/runs/{run['id']}/steps", headers=auth())
    attempts = (await resp.json())["data"][0]["attempts"]
    assert [(a["attempt"], a["status"]) for a in attempts] == [
        (1, "failed"),
        (2, "failed"),
        (3, "succeeded"),
    ]


async def test_retries_exhausted_fail_the_run(
    client: Client, publish: Publish, outside: tuple[Outside, str]
) -> None:
    world, base = outside
    retry = {"max_attempts": 2, "initial_interval_s": 0.05}
    wf = await publish(
        [
            http("call", f"{base}/status/500", retry=retry),
            {"id": "never", "type": "transform", "data": {"output": {}}},
        ],
        [edge("call", "never")],
    )
    run = await start_run(client, wf["id"])
    done = await wait_run(client, run["id"])
    assert done["status"] == "failed"
    assert done["error"]["step_id"] == "call" and "500" in done["error"]["message"]
    assert world.calls["/status/500"] == 2
    assert done["step_statuses"] == {"call": "failed"}, "the next step never started"
    resp = await client.get(f"/api/v1/runs/{run['id']}/logs", headers=auth())
    lines = (await resp.json())["data"]
    assert any(line["level"] == "error" and "500" in line["message"] for line in lines)


async def test_a_4xx_is_not_retried(
    client: Client, publish: Publish, outside: tuple[Outside, str]
) -> None:
    world, base = outside
    wf = await publish([http("call", f"{base}/status/404", retry={"max_attempts": 5})])
    done = await wait_run(client, (await start_run(client, wf["id"]))["id"])
    assert done["status"] == "failed"
    assert world.calls["/status/404"] == 1


async def test_step_timeout(client: Client, publish: Publish, outside: tuple[Outside, str]) -> None:
    _, base = outside
    wf = await publish([http("call", f"{base}/slow/x?s=5", timeout_s=0.2)])
    done = await wait_run(client, (await start_run(client, wf["id"]))["id"])
    assert done["status"] == "failed"
    assert "timed out" in done["error"]["message"]


async def test_run_timeout(client: Client, publish: Publish) -> None:
    wf = await publish([{"id": "nap", "type": "delay", "data": {"seconds": 30}}])
    run = await start_run(client, wf["id"], timeout_s=0.3)
    done = await wait_run(client, run["id"], within_s=5)
    assert done["status"] == "failed" and "timed out" in done["error"]["message"]
    assert done["step_statuses"]["nap"] == "cancelled"


async def test_durable_delay_records_its_wake_time(client: Client, publish: Publish) -> None:
    wf = await publish([{"id": "nap", "type": "delay", "data": {"seconds": 0.3}}])
    run = await start_run(client, wf["id"])
    waiting = await wait_run(client, run["id"], ("running",))
    resp = await client.get(f"/api/v1/runs/{run['id']}/steps", headers=auth())
    step = (await resp.json())["data"][0]
    if step["status"] == "waiting":
        assert step["wake_at"] is not None
    assert waiting["status"] == "running"
    done = await wait_run(client, run["id"])
    assert done["status"] == "succeeded"
    assert 0.25 <= done["output"]["nap"]["waited_s"] < 5


async def test_inputs_are_validated_and_only_published_workflows_run(
    client: Client, publish: Publish, make_workflow: Any
) -> None:
    schema = {"type": "object", "required": ["day"], "properties": {"day": {"type": "string"}}}
    wf = await publish(
        [{"id": "t", "type": "transform", "data": {"output": {}}}], input_schema=schema
    )
    url = f"/api/v1/workflows/{wf['id']}/run"
    bodies: list[dict[str, Any]] = [
        {"input": {}},
        {"input": {"day": 3}},
        {"input": "x"},
        {"timeout_s": -1},
    ]
    for body in bodies:
        resp = await client.post(url, json=body, headers=auth())
        assert resp.status == 422, body
    resp = await client.post(url, json={"input": {"day": "mon"}}, headers=auth("bob"))
    assert resp.status == 404
    draft = await make_workflow()
    resp = await client.post(f"/api/v1/workflows/{draft['id']}/execute", json={}, headers=auth())
    assert resp.status == 409
    await client.delete(f"/api/v1/workflows/{wf['id']}", headers=auth())
    resp = await client.post(url, json={"input": {"day": "mon"}}, headers=auth())
    assert resp.status == 409 and "archived" in (await resp.json())["error"]["message"]
    resp = await client.get("/api/v1/runs", headers=auth())
    assert (await resp.json())["pagination"]["total"] == 0


async def test_a_refused_start_leaves_no_run_and_no_actor(
    client: Client, publish: Publish, caplog: pytest.LogCaptureFixture
) -> None:
    # The run's actor starts planning while its row is being inserted; when the insert is
    # refused (the workflow was archived after this process cached it), the actor must go
    # without writing anything or failing anything.
    nodes = [{"id": f"s{i}", "type": "transform", "data": {"output": {"i": i}}} for i in range(3)]
    wf = await publish(nodes, [edge("s0", "s1"), edge("s1", "s2")])
    url = f"/api/v1/workflows/{wf['id']}/run"
    resp = await client.post(url + "?wait_s=10", json={}, headers=auth())
    assert resp.status == 200 and (await resp.json())["data"]["status"] == "succeeded"
    await client.delete(f"/api/v1/workflows/{wf['id']}", headers=auth())
    caplog.set_level(logging.ERROR)
    for query in ("", "?wait_s=5"):
        resp = await client.post(url + query, json={}, headers=auth())
        assert resp.status == 409 and "archived" in (await resp.json())["error"]["message"]
    resp = await client.get("/api/v1/runs", headers=auth())
    assert (await resp.json())["pagination"]["total"] == 1
    registry = client.app[DISPATCHER].registry

    def run_actors() -> list[str]:
        keys, actors = [], registry.keys()
        for key in actors:
            try:
                keys.append(str(uuid.UUID(key)))
            except ValueError:
                continue  # not a run's actor (cron, training jobs)
        return keys

    for _ in range(100):
        if not run_actors():
            break
        await asyncio.sleep(0.02)
    assert run_actors() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_idempotent_start_returns_the_first_run(client: Client, publish: Publish) -> None:
    wf = await publish([{"id": "t", "type": "transform", "data": {"output": {}}}])
    headers = {**auth(), "X-Idempotency-Key": "nightly-2026-11-23"}
    first = await client.post(f"/api/v1/workflows/{wf['id']}/run", json={}, headers=headers)
    again = await client.post(f"/api/v1/workflows/{wf['id']}/run", json={}, headers=headers)
    assert (await first.json())["data"]["id"] == (await again.json())["data"]["id"]
    resp = await client.get("/api/v1/runs", headers=auth())
    assert (await resp.json())["pagination"]["total"] == 1


async def test_list_runs_filters(client: Client, publish: Publish) -> None:
    wf = await publish([{"id": "t", "type": "transform", "data": {"output": {}}}])
    run = await start_run(client, wf["id"])
    await wait_run(client, run["id"])
    await start_run(client, wf["id"], user="alice")
    query = f"/api/v1/runs?workflow_id={wf['id']}&status=succeeded&trigger_type=api"
    resp = await client.get(query, headers=auth())
    assert run["id"] in [r["id"] for r in (await resp.json())["data"]]
    resp = await client.get("/api/v1/runs", headers=auth("bob"))
    assert (await resp.json())["data"] == []
    for bad in (
        "status=lost",
        "workflow_id=x",
        "since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z",
    ):
        resp = await client.get(f"/api/v1/runs?{bad}", headers=auth())
        assert resp.status == 422, bad
    resp = await client.get(f"/api/v1/runs/{run['id']}", headers=auth("bob"))
    assert resp.status == 404


async def test_events_are_gap_free_and_ordered(client: Client, publish: Publish) -> None:
    nodes = [{"id": f"s{i}", "type": "transform", "data": {"output": {"i": i}}} for i in range(5)]
    edges = [edge(f"s{i}", f"s{i + 1}") for i in range(4)]
    wf = await publish(nodes, edges)
    done = await wait_run(client, (await start_run(client, wf["id"]))["id"])
    events = await events_of(client, done["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["event"] == "run.created" and events[-1]["event"] == "run.succeeded"
    assert done["last_seq"] == len(events)
    resp = await client.get(f"/api/v1/runs/{done['id']}/events?after_seq=3&limit=2", headers=auth())
    page = await resp.json()
    assert [e["seq"] for e in page["data"]] == [4, 5]
    assert page["pagination"]["next_after_seq"] == 5
    started = [datetime.fromisoformat(e["at"]) for e in events if e["event"] == "step.succeeded"]
    assert started == sorted(started)


async def test_a_chain_of_pure_steps_longer_than_one_rounds_call_runs_to_the_end(
    client: Client, publish: Publish
) -> None:
    # More pure steps in a row than one call commits (MAX_ROUNDS): the rest follow in the
    # next calls, each step once and in order.
    n = MAX_ROUNDS * 2 + 3
    nodes = [{"id": f"s{i}", "type": "transform", "data": {"output": {"i": i}}} for i in range(n)]
    edges = [edge(f"s{i}", f"s{i + 1}") for i in range(n - 1)]
    wf = await publish(nodes, edges)
    resp = await client.post(f"/api/v1/workflows/{wf['id']}/run?wait_s=20", json={}, headers=auth())
    assert resp.status == 200, await resp.text()
    run = (await resp.json())["data"]
    assert run["status"] == "succeeded" and run["output"] == {f"s{n - 1}": {"i": n - 1}}
    events = await events_of(client, run["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    succeeded = [e["step_id"] for e in events if e["event"] == "step.succeeded"]
    assert succeeded == [f"s{i}" for i in range(n)]


async def test_start_and_wait_for_the_end(client: Client, publish: Publish) -> None:
    wf = await publish([{"id": "t", "type": "transform", "data": {"output": {"ok": True}}}])
    resp = await client.post(f"/api/v1/workflows/{wf['id']}/run?wait_s=10", json={}, headers=auth())
    assert resp.status == 200
    run = (await resp.json())["data"]
    assert run["status"] == "succeeded" and run["output"] == {"t": {"ok": True}}
    resp = await client.get(
        f"/api/v1/audit-logs?entity_type=run&entity_id={run['id']}", headers=auth()
    )
    entries = (await resp.json())["data"]
    assert [(e["action"], e["user_id"], e["changes"]) for e in entries] == [
        ("start", "alice", {"workflow_id": wf["id"], "trigger": "api"})
    ]
    slow = await publish([{"id": "nap", "type": "delay", "data": {"seconds": 5}}])
    resp = await client.post(
        f"/api/v1/workflows/{slow['id']}/run?wait_s=0.2", json={}, headers=auth()
    )
    assert resp.status == 202 and (await resp.json())["data"]["status"] in ("pending", "running")
    resp = await client.post(
        f"/api/v1/workflows/{slow['id']}/run?wait_s=99", json={}, headers=auth()
    )
    assert resp.status == 422


async def test_a_waited_start_commits_its_run_with_its_first_step(
    client: Client, publish: Publish
) -> None:
    # A caller who waits has its run inserted in the call that commits the run's first rounds:
    # the run's creation, its start and its first step are one transaction, each later step
    # its own.
    nodes = [{"id": f"s{i}", "type": "transform", "data": {"output": {"i": i}}} for i in range(3)]
    wf = await publish(nodes, [edge("s0", "s1"), edge("s1", "s2")])
    resp = await client.post(f"/api/v1/workflows/{wf['id']}/run?wait_s=10", json={}, headers=auth())
    assert resp.status == 200 and (await resp.json())["data"]["status"] == "succeeded"
    run_id = uuid.UUID((await resp.json())["data"]["id"])
    rows = await client.app[DB_POOL].fetch(
        "SELECT event, step_id, xmin::text AS xid FROM run_events WHERE run_id = $1 ORDER BY seq",
        run_id,
    )
    by_step: dict[str, set[str]] = {}
    for row in rows:
        by_step.setdefault(row["step_id"] or row["event"], set()).add(row["xid"])
    assert by_step["run.created"] == by_step["run.started"] == by_step["s0"]
    assert len({xid for xids in by_step.values() for xid in xids}) == 3


async def test_a_waited_start_its_actor_did_not_send_is_inserted_alone(
    client: Client, publish: Publish, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The actor that was to insert the run with its first rounds stops before sending them
    # (here: its shard is gone by the time it starts); the start is not lost: the request
    # inserts the run itself, and the shard's next owner carries it on.
    wf = await publish([{"id": "t", "type": "transform", "data": {"output": {"ok": True}}}])
    dispatcher = client.app[DISPATCHER]
    lease_for = dispatcher.shards.lease_for
    asked: list[int] = []

    def lost_after_the_first_look(shard: int) -> Lease | None:
        asked.append(shard)
        return lease_for(shard) if asked.count(asked[0]) == 1 or shard != asked[0] else None

    monkeypatch.setattr(dispatcher.shards, "lease_for", lost_after_the_first_look)
    url = f"/api/v1/workflows/{wf['id']}/run?wait_s=0.3"
    resp = await client.post(url, json={}, headers=auth())
    assert resp.status == 202
    run = (await resp.json())["data"]
    assert run["status"] == "pending"
    monkeypatch.undo()
    await dispatcher.wake(uuid.UUID(run["id"]))
    assert (await wait_run(client, run["id"]))["status"] == "succeeded"
    assert [e["event"] for e in await events_of(client, run["id"])][:2] == [
        "run.created",
        "run.started",
    ]


async def test_start_and_wait_answers_what_a_later_read_shows(
    client: Client, publish: Publish
) -> None:
    # A chain of pure steps ends in the call that commits its rounds, which returns the ended
    # run; the answer must be exactly what GET /runs/{id} reads afterwards.
    ok = [
        {"id": "a", "type": "transform", "data": {"output": {"n": "{{ input.n }}"}}},
        {"id": "gate", "type": "condition", "data": {"expression": "steps.a.output.n > `1`"}},
        {"id": "big", "type": "transform", "data": {"output": {"size": "big"}}},
        {"id": "small", "type": "transform", "data": {"output": {"size": "small"}}},
    ]
    edges = [edge("a", "gate"), edge("gate", "big", "true"), edge("gate", "small", "false")]
    broken = [
        {"id": "a", "type": "transform", "data": {"output": {"n": 1}}},
        {"id": "b", "type": "transform", "data": {"output": {"x": "{{ length(input.n) }}"}}},
    ]
    for nodes, links, status in ((ok, edges, "succeeded"), (broken, [edge("a", "b")], "failed")):
        wf = await publish(nodes, links)
        resp = await client.post(
            f"/api/v1/workflows/{wf['id']}/run?wait_s=10", json={"input": {"n": 2}}, headers=auth()
        )
        assert resp.status == 200
        answered = (await resp.json())["data"]
        assert answered["status"] == status
        resp = await client.get(f"/api/v1/runs/{answered['id']}", headers=auth())
        assert (await resp.json())["data"] == answered
    assert answered["error"]["step_id"] == "b"
    assert answered["step_statuses"] == {"a": "succeeded", "b": "failed"}


async def test_metrics_count_requests_and_ended_runs(client: Client, publish: Publish) -> None:
    wf = await publish([{"id": "t", "type": "transform", "data": {"output": {}}}])
    resp = await client.post(f"/api/v1/workflows/{wf['id']}/run?wait_s=10", json={}, headers=auth())
    assert resp.status == 200
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert 'stepwell_runs_finished_total{status="succeeded"} 1.0' in text
    assert (
        'stepwell_http_requests_total{method="POST",route="/api/v1/workflows/{id}/run",'
        'status="200"} 1.0' in text
    )
