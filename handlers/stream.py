"""Live runs: WebSocket `/ws/runs/{id}` and SSE `/api/v1/runs/{id}/events/stream`.

Both read events from the database by seq, so a client gets every event once and in order, on
any process, across reconnects. The bus only wakes the reader early; without it the reader
still polls every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from aiohttp import WSMsgType, web
from aiohttp_apigami import docs

from handlers.common import error_responses, principal_of, record_json
from handlers.run_views import event_json
from runtime.errors import NotFound, ValidationFailed
from runtime.keys import DB_POOL, DISPATCHER
from runtime.sql import queries

POLL_S = 1.0
BATCH = 500
HEARTBEAT_S = 15.0
TERMINAL_EVENTS = frozenset({"run.succeeded", "run.failed", "run.cancelled"})
PING_ONLY = 'this socket only takes {"type": "ping"}; events flow one way'
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def _uuid(request: web.Request) -> UUID:
    try:
        return UUID(request.match_info["id"])
    except ValueError as exc:
        raise ValidationFailed("run id must be a UUID", {"location": "path"}) from exc


def _seq(text: str | None, name: str) -> int | None:
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 18:
        raise ValidationFailed(f"{name} must be a non-negative integer", {"location": name})
    return int(text)


async def _snapshot(request: web.Request, run_id: UUID) -> Any:
    """The run as it is now, with the seq it reflects; 404 for someone else's run."""
    row = await request.app[DB_POOL].fetchrow(queries["run_snapshot"], run_id)
    owner = principal_of(request).owner_filter
    if row is None or (owner is not None and row["owner_id"] != owner):
        raise NotFound(f"run {run_id} not found")
    return row


async def _events_after(request: web.Request, run_id: UUID, seq: int) -> list[dict[str, Any]]:
    rows = await request.app[DB_POOL].fetch(queries["list_run_events"], run_id, seq, BATCH)
    return [event_json(r) for r in rows]


async def follow(
    request: web.Request, run_id: UUID, cursor: int, done: bool, stop: asyncio.Event
) -> AsyncIterator[dict[str, Any]]:
    """Every event after `cursor`, in order, until the run ends (or `stop` is set)."""
    with request.app[DISPATCHER].bus.subscribe(run_id) as sub:
        while not stop.is_set():
            events = await _events_after(request, run_id, cursor)
            for event in events:
                yield event
                cursor = event["seq"]
                done = event["event"] in TERMINAL_EVENTS or (
                    done and event["event"] != "run.retried"
                )
            if done and len(events) < BATCH:
                return
            if not events:
                await sub.wait(POLL_S)


@docs(
    tags=["runs"],
    summary="Watch a run live over WebSocket",
    description="First a `snapshot` message with the seq it reflects, then every later event "
    "once, in order. `?after_seq=N` resumes after event N without a snapshot. Token in "
    "`Authorization` or `?token=`. Closes with 1000 when the run has ended.",
    responses={101: {"description": "WebSocket of run events"}, **error_responses(401, 404, 422)},
)
async def run_socket(request: web.Request) -> web.StreamResponse:
    run_id = _uuid(request)
    after = _seq(request.query.get("after_seq"), "after_seq")
    snap = await _snapshot(request, run_id)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S)
    await ws.prepare(request)
    stop = asyncio.Event()
    reader = asyncio.create_task(_read_client(ws, stop))
    try:
        if after is None:
            cursor = snap["last_seq"]
            await ws.send_json(_snapshot_message(snap))
        else:
            cursor = after
        done = snap["status"] in TERMINAL_STATUSES
        async for event in follow(request, run_id, cursor, done, stop):
            await ws.send_json(event)
        if not ws.closed:
            await ws.close(code=1000, message=b"run finished")
    except (ConnectionResetError, RuntimeError):
        pass  # the client went away mid-send
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return ws


def _snapshot_message(snap: Any) -> dict[str, Any]:
    statuses = snap["step_statuses"]
    run = record_json(snap, skip=("total", "shard", "step_statuses"))
    return {"type": "snapshot", "run": run, "step_statuses": statuses, "seq": snap["last_seq"]}


async def _read_client(ws: web.WebSocketResponse, stop: asyncio.Event) -> None:
    """Answer pings, reject anything else clearly, and notice when the client leaves."""
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                message = json.loads(msg.data)
            except ValueError:
                message = None
            if isinstance(message, dict) and message.get("type") == "ping":
                await ws.send_json({"type": "pong"})
            else:
                await ws.send_json(
                    {
                        "type": "error",
                        "error": {
                            "code": "VALIDATION_ERROR",
                            "message": PING_ONLY,
                        },
                    }
                )
    finally:
        stop.set()


@docs(
    tags=["runs"],
    summary="A run's events as Server-Sent Events",
    description="Sends every event after `Last-Event-ID` (or `?after_seq=`), each with "
    "`id: <seq>`, then follows the run live; the stream ends when the run has ended.",
    responses={
        200: {"description": "text/event-stream of run events"},
        **error_responses(401, 404, 422),
    },
)
async def run_sse(request: web.Request) -> web.StreamResponse:
    run_id = _uuid(request)
    after = _seq(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    if after is None:
        after = _seq(request.query.get("after_seq"), "after_seq") or 0
    snap = await _snapshot(request, run_id)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    stop = asyncio.Event()
    done = snap["status"] in TERMINAL_STATUSES
    with contextlib.suppress(ConnectionResetError):
        async for event in follow(request, run_id, after, done, stop):
            chunk = f"id: {event['seq']}\nevent: {event['event']}\ndata: {json.dumps(event)}\n\n"
            await resp.write(chunk.encode())
    return resp


def routes() -> list[web.RouteDef]:
    return [
        web.get("/ws/runs/{id}", run_socket, allow_head=False),
        web.get("/api/v1/runs/{id}/events/stream", run_sse, allow_head=False),
    ]
