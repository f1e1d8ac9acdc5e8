"""How runs, events and log lines look to clients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handlers.common import jsonable, record_json

_INTERNAL = ("total", "shard", "definition", "steps")
_LEVELS = {"failed": "error", "retrying": "warning", "cancelled": "warning"}


def run_detail(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run (a `get_run_detail` row) with its context ({input, steps}) and step statuses."""
    steps = run["steps"]
    context = {
        "input": run["input"],
        "steps": {s["step_id"]: {"output": s["output"], "status": s["status"]} for s in steps},
    }
    return {
        **record_json(run, skip=_INTERNAL),
        "context": context,
        "step_statuses": {s["step_id"]: s["status"] for s in steps},
    }


def event_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "event",
        "seq": row["seq"],
        "event": row["event"],
        "step_id": row["step_id"],
        "data": row["data"],
        "at": jsonable(row["at"]),
    }


def log_line(row: Mapping[str, Any]) -> dict[str, Any]:
    """One readable line for one event."""
    subject, _, verb = str(row["event"]).partition(".")
    data = row["data"] or {}
    who = f"step {row['step_id']}" if row["step_id"] else "run"
    message = f"{who} {verb}"
    if "attempt" in data and subject == "step":
        message += f" (attempt {data['attempt']})"
    error = data.get("error")
    if isinstance(error, dict) and error.get("message"):
        message += f": {error['message']}"
    elif data.get("reason"):
        message += f": {data['reason']}"
    return {
        "seq": row["seq"],
        "at": jsonable(row["at"]),
        "level": _LEVELS.get(verb, "info"),
        "step_id": row["step_id"],
        "message": message,
    }
