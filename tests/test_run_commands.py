"""Approvals, cancel, retry-from-failed and subworkflows."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Client, Publish, auth, events_of, start_run, wait_run
from tests.outside import Outside
from tests.test_runs import edge, http

APPROVAL = {
    "id": "approve",
    "type": "approval",
    "data": {
        "message": "Ship model?",
        "data_schema": {"type": "object", "required": ["comment"]},
    },
}
AFTER = {
    "id": "ship",
    "type": "transform",
    "data": {"output": {"note": "{{ steps.approve.output.data.comment }}"}},
}


async def _resume(
    client: Client, run_id: str, user: str = "alice", role: str = "user", **body: Any
) -> Any:
    return await client.post(f"/api/v1/runs/{run_id}/resume", json=body, headers=auth(user, role))


async def test_approval_pauses_until_resumed_with_data(client: Client, publish: Publish) -> None:
    wf = await publish([APPROVAL, AFTER], [edge("approve", "ship")])
    run = await start_run(client, wf["id"])
    paused = await wait_run(client, run["id"], ("paused",))
    assert paused["step_statuses"] == {"approve": "waiting"}

    resp = await _resume(client, run["id"], step_id="approve", data={"no": "comment"})
    assert resp.status == 422, "data must match the approval's data_schema"
    resp = await _resume(client, run["id"], step_id="ship", data={})
    assert resp.status == 422
    resp = await _resume(client, run["id"], user="bob", step_id="approve", data={"comment": "x"})
    assert resp.status == 404

    resp = await _resume(client, run["id"], step_id="approve", data={"comment": "ship it"})
    assert resp.status == 202
    done = await wait_run(client, run["id"])
    assert done["status"] == "succeeded"
    assert done["output"] == {"ship": {"note": "ship it"}}
    assert done["context"]["steps"]["approve"]["output"]["approved_by"] == "alice"
    names = [e["event"] for e in await events_of(client, run["id"])]
    assert "run.paused" in names and "run.resumed" in names

    resp = await _resume(client, run["id"], step_id="approve", data={"comment": "again"})
    assert resp.status == 409


async def test_approval_rejection_and_approvers(client: Client, publish: Publish) -> None:
    gate = {"id": "gate", "type": "approval", "data": {"approvers": ["carol"]}}
    wf = await publish([gate])
    run = await start_run(client, wf["id"])
    await wait_run(client, run["id"], ("paused",))
    resp = await _resume(client, run["id"], step_id="gate", approved=False)
    assert resp.status == 403, "alice owns the run but is not an approver"
    resp = await _resume(
        client, run["id"], user="root", role="admin", step_id="gate", approved=False
    )
    assert resp.status == 202
    done = await wait_run(client, run["id"])
    assert done["status"] == "failed" and "rejected by root" in done["error"]["message"]


async def test_approval_timeouts(client: Client, publish: Publish) -> None:
    for on_timeout, status in (("approve", "succeeded"), ("fail", "failed")):
        gate = {
            "id": "gate",
            "type": "approval",
            "data": {"timeout_s": 0.2, "on_timeout": on_timeout},
        }
        wf = await publish([gate])
        done = await wait_run(client, (await start_run(client, wf["id"]))["id"])
        assert done["status"] == status, on_timeout
        if status == "succeeded":
            assert done["output"]["gate"]["auto"] is True
        else:
            assert "timed out" in done["error"]["message"]


async def test_cancel_stops_a_running_step(
    client: Client, publish: Publish, outside: tuple[Outside, str]
) -> None:
    world, base = outside
    wf = await publish([http("wait", f"{base}/block/c")])
    run = await start_run(client, wf["id"])
    await asyncio.wait_for(world.blocked.wait(), 10)
    resp = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=auth())
    assert resp.status == 202
    done = await wait_run(client, run["id"])
    assert done["status"] == "cancelled"
    assert done["step_statuses"] == {"wait": "cancelled"}
    for _ in range(50):
        if world.cancelled:
            break
        await asyncio.sleep(0.02)
    assert world.cancelled == 1, "the outgoing request was aborted"
    resp = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=auth())
    assert resp.status == 409
    resp = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=auth("bob"))
    assert resp.status == 404


async def test_retry_continues_from_the_failed_step(
    client: Client, publish: Publish, outside: tuple[Outside, str]
) -> None:
    world, base = outside
    wf = await publish(
        [
            http("first", f"{base}/ok/first"),
            http("second", f"{base}/toggle/second"),
            {"id": "third", "type": "transform", "data": {"output": {"ok": True}}},
        ],
        [edge("first", "second"), edge("second", "third")],
    )
    run = await start_run(client, wf["id"])
    failed = await wait_run(client, run["id"])
    assert failed["status"] == "failed"
    world.broken = False
    resp = await client.post(f"/api/v1/runs/{run['id']}/retry", headers=auth())
    assert resp.status == 202
    done = await wait_run(client, run["id"], ("succeeded",), within_s=10)
    assert done["status"] == "succeeded", done
    assert world.calls["/ok/first"] == 1, "a succeeded step is not run again"
    assert world.calls["/toggle/second"] == 2
    resp = await client.get(f"/api/v1/runs/{run['id']}/steps", headers=auth())
    second = next(s for s in (await resp.json())["data"] if s["step_id"] == "second")
    assert [a["status"] for a in second["attempts"]] == ["failed", "succeeded"]
    resp = await client.post(f"/api/v1/runs/{run['id']}/retry", headers=auth())
    assert resp.status == 409, "only failed runs can be retried"


async def test_subworkflow_waits_for_its_child(client: Client, publish: Publish) -> None:
    child = await publish(
        [{"id": "double", "type": "transform", "data": {"output": {"v": "{{ input.v }}"}}}],
        input_schema={"type": "object", "required": ["v"]},
    )
    parent = await publish(
        [
            {
                "id": "call",
                "type": "subworkflow",
                "data": {"workflow_id": child["id"], "input": {"v": "{{ input.v }}"}},
            },
            {
                "id": "use",
                "type": "transform",
                "data": {"output": {"got": "{{ steps.call.output.output.double.v }}"}},
            },
        ],
        [edge("call", "use")],
    )
    run = await start_run(client, parent["id"], {"v": 21})
    done = await wait_run(client, run["id"])
    assert done["status"] == "succeeded", done
    assert done["output"] == {"use": {"got": 21}}
    child_run_id = done["context"]["steps"]["call"]["output"]["run_id"]
    resp = await client.get(f"/api/v1/runs/{child_run_id}", headers=auth())
    child_run = (await resp.json())["data"]
    assert child_run["trigger_type"] == "subworkflow"
    assert child_run["parent_run_id"] == run["id"]


async def test_subworkflow_failures_reach_the_parent(client: Client, publish: Publish) -> None:
    child = await publish(
        [{"id": "x", "type": "transform", "data": {"output": {}}}],
        input_schema={"type": "object", "required": ["v"]},
    )
    parent = await publish(
        [{"id": "call", "type": "subworkflow", "data": {"workflow_id": child["id"], "input": {}}}]
    )
    done = await wait_run(client, (await start_run(client, parent["id"]))["id"])
    assert done["status"] == "failed"
    assert "input_schema" in done["error"]["message"]
