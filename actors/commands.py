"""What durable commands do to a run: cancel, resume, retry, and a child run finishing.

Each function plans on a scratch copy of the run state and adds to a transition; the run actor
commits both together, marking the command processed in the same statement.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from actors.graph import StepStatus
from actors.run_state import RunState
from actors.run_store import StepChange, Transition
from actors.steps import approval
from actors.steps.context import StepFailed


def apply(scratch: RunState, t: Transition, command: dict[str, Any]) -> str:
    """Apply one command; returns its outcome ("applied" or why it was not)."""
    kind, payload = command["kind"], command["payload"] or {}
    if scratch.terminal and kind != "retry":
        return f"{kind} ignored: run already {scratch.run_status}"
    if kind == "cancel":
        scratch.run_status = "cancelled"
        t.run("cancelled", "run.cancelled", None, by=command.get("created_by"))
        cancel_in_flight(scratch, t, "run cancelled")
        return "cancel applied"
    if kind == "resume":
        return _resume(scratch, t, payload)
    if kind == "retry":
        return _retry(scratch, t)
    if kind == "child_done":
        return _child_done(scratch, t, payload)
    return f"unknown command {kind!r} ignored"


def cancel_in_flight(scratch: RunState, t: Transition, reason: str) -> None:
    """Cancel every running or waiting step (their tasks stop once this is committed)."""
    for sid in scratch.in_flight():
        change = StepChange(sid, "cancelled", scratch.attempts[sid], error={"message": reason})
        scratch.record(t, change, "step.cancelled", reason=reason)
    for sid in [s for s in scratch.statuses if scratch.retry_pending(s)]:
        change = StepChange(sid, "cancelled", scratch.attempts[sid], error={"message": reason})
        scratch.record(t, change, "step.cancelled", reason=reason)


def failed_attempt(
    scratch: RunState, t: Transition, step_id: str, attempt: int, error: StepFailed
) -> None:
    """Schedule the next attempt with backoff and jitter, or fail the step for good."""
    policy = scratch.graph.nodes[step_id].retry
    if error.retryable and attempt < policy.max_attempts:
        # Jitter spreads retries of many runs hitting one failing service.
        pause = policy.delay_before(attempt + 1) * random.uniform(0.8, 1.2)  # noqa: S311
        wake = datetime.now(UTC) + timedelta(seconds=pause)
        change = StepChange(
            step_id, "pending", attempt, error=error.as_error(), wake_at=wake, result="failed"
        )
        scratch.record(
            t, change, "step.retrying", error=error.as_error(), next_attempt_at=wake.isoformat()
        )
        return
    change = StepChange(step_id, "failed", attempt, error=error.as_error())
    scratch.record(t, change, "step.failed", error=error.as_error())


def approval_timed_out(scratch: RunState, t: Transition, sid: str) -> None:
    config = scratch.graph.nodes[sid].config
    attempt = scratch.attempts[sid]
    if config.get("on_timeout", "fail") == "approve":
        output = approval.decided(True, {}, None, auto=True)
        scratch.record(
            t, StepChange(sid, "succeeded", attempt, output=output), "step.succeeded", output=output
        )
        return
    error = {"message": "approval timed out", "code": "approval_timeout", "retryable": False}
    scratch.record(t, StepChange(sid, "failed", attempt, error=error), "step.failed", error=error)


def _resume(scratch: RunState, t: Transition, payload: dict[str, Any]) -> str:
    sid = payload.get("step_id")
    node = scratch.graph.nodes.get(str(sid))
    if node is None or node.type != "approval":
        return f"resume ignored: {sid!r} is not an approval step"
    if scratch.statuses[node.id] != StepStatus.WAITING:
        return f"resume ignored: step {sid!r} is {scratch.statuses[node.id]}"
    attempt = scratch.attempts[node.id]
    user = payload.get("user_id")
    if scratch.run_status == "paused":
        scratch.run_status = "running"
        t.run("running", "run.resumed", None, by=user)
    if payload.get("approved", True):
        output = approval.decided(True, payload.get("data"), user)
        scratch.record(
            t,
            StepChange(node.id, "succeeded", attempt, output=output),
            "step.succeeded",
            output=output,
        )
    else:
        error = {
            "message": f"rejected by {user}",
            "code": "rejected",
            "retryable": False,
            "data": payload.get("data"),
        }
        scratch.record(
            t, StepChange(node.id, "failed", attempt, error=error), "step.failed", error=error
        )
    return "resume applied"


def _retry(scratch: RunState, t: Transition) -> str:
    if scratch.run_status != "failed":
        return f"retry ignored: run is {scratch.run_status}"
    scratch.run_status = "running"
    t.run("running", "run.retried")
    for sid, status in list(scratch.statuses.items()):
        if status in (StepStatus.FAILED, StepStatus.CANCELLED):
            # The attempt number is kept, so the next attempt gets a new, higher number.
            change = StepChange(sid, "pending", scratch.attempts[sid])
            scratch.record(t, change, "step.reset")
    return "retry applied"


def _child_done(scratch: RunState, t: Transition, payload: dict[str, Any]) -> str:
    sid = str(payload.get("step_id"))
    attempt = payload.get("attempt")
    if not isinstance(attempt, int) or scratch.statuses.get(sid) != StepStatus.WAITING:
        return "child result ignored: step no longer waiting for it"
    if scratch.attempts.get(sid) != attempt:
        return "child result ignored: step no longer waiting for it"
    status = payload.get("status")
    # A child run reports its run; other waited-for work (a training job) its own result.
    result = payload.get("result") or {
        "run_id": payload.get("child_run_id"),
        "status": status,
        "output": payload.get("output"),
    }
    if status == "succeeded":
        scratch.record(
            t, StepChange(sid, "succeeded", attempt, output=result), "step.succeeded", output=result
        )
    else:
        error = StepFailed(
            f"child run {status}", details={"child": result, "error": payload.get("error")}
        )
        failed_attempt(scratch, t, sid, attempt, error)
    return "child result applied"
