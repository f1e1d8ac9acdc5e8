"""A run's state in memory: rebuilt from the database, changed only after a commit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from actors.graph import Graph, StepStatus, graph_of
from actors.run_store import StepChange, Transition

TERMINAL_RUN = frozenset({"succeeded", "failed", "cancelled"})
_ENDED = frozenset(s for s in StepStatus if s.terminal)


@dataclass(slots=True)
class RunState:
    """Statuses, attempts, outputs and wake times of every step, plus the run's own status."""

    graph: Graph
    run_status: str
    input: Any
    statuses: dict[str, StepStatus] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, Any] = field(default_factory=dict)
    wake_at: dict[str, datetime | None] = field(default_factory=dict)
    started_at: dict[str, datetime | None] = field(default_factory=dict)

    @classmethod
    def load(cls, run: Mapping[str, Any], steps: list[Mapping[str, Any]]) -> RunState:
        graph = graph_of(run["workflow_id"], run["definition"])
        state = cls(graph, run["status"], run["input"])
        for node_id in state.graph.nodes:
            state.statuses[node_id] = StepStatus.PENDING
            state.attempts[node_id] = 0
        for row in steps:
            sid = row["step_id"]
            state.statuses[sid] = StepStatus(row["status"])
            state.attempts[sid] = row["attempt"]
            state.outputs[sid] = row["output"]
            state.errors[sid] = row["error"]
            state.wake_at[sid] = row["wake_at"]
            state.started_at[sid] = row["started_at"]
        return state

    def copy(self) -> RunState:
        return RunState(
            self.graph,
            self.run_status,
            self.input,
            dict(self.statuses),
            dict(self.attempts),
            dict(self.outputs),
            dict(self.errors),
            dict(self.wake_at),
            dict(self.started_at),
        )

    @property
    def terminal(self) -> bool:
        return self.run_status in TERMINAL_RUN

    def retry_pending(self, step_id: str) -> bool:
        """A failed attempt whose next attempt is scheduled for later."""
        return (
            self.statuses[step_id] == StepStatus.PENDING and self.wake_at.get(step_id) is not None
        )

    def effective_statuses(self) -> dict[str, StepStatus]:
        """Statuses for scheduling: a step waiting to retry counts as still running."""
        # Called once per planned round: most runs have no retry pending, and then this is the
        # statuses themselves (callers only read them).
        waiting = [sid for sid, at in self.wake_at.items() if at is not None]
        if not any(self.retry_pending(sid) for sid in waiting):
            return self.statuses
        return {
            sid: StepStatus.RUNNING if self.retry_pending(sid) else status
            for sid, status in self.statuses.items()
        }

    def scope(self) -> dict[str, Any]:
        """What templates and conditions see: {input, steps: {id: {output, status}}}."""
        # No copies: outputs are never changed once recorded, and templates only read them.
        steps = {
            sid: {"output": self.outputs.get(sid), "status": str(status)}
            for sid, status in self.statuses.items()
            if status != StepStatus.PENDING
        }
        return {"input": self.input, "steps": steps}

    def record(self, t: Transition, change: StepChange, event: str, **data: Any) -> None:
        """Add a step change to the transition and to this (scratch) state."""
        t.step(change, event, **data)
        sid = change.step_id
        self.statuses[sid] = StepStatus(change.status)
        self.attempts[sid] = change.attempt
        self.outputs[sid] = change.output
        self.errors[sid] = change.error
        self.wake_at[sid] = change.wake_at
        if change.status == StepStatus.RUNNING:
            # The database stamps its own time; this copy only serves to report waits.
            self.started_at[sid] = datetime.now(UTC)

    def in_flight(self) -> list[str]:
        return [
            s for s, st in self.statuses.items() if st in (StepStatus.RUNNING, StepStatus.WAITING)
        ]

    def verdict(self) -> tuple[str, dict[str, Any] | None]:
        """The run status the step statuses call for, with the error when it failed."""
        # One pass over the steps: this runs once per planned round.
        failed: str | None = None
        ended, running, approvals = True, False, False
        wake_at = self.wake_at
        for sid, status in self.statuses.items():
            if status in _ENDED:
                if status == StepStatus.FAILED and failed is None:
                    failed = sid
                continue
            ended = False
            if status == StepStatus.RUNNING:
                running = True
            elif status == StepStatus.PENDING:
                running = running or wake_at.get(sid) is not None  # a retry is due later
            elif status == StepStatus.WAITING and self.graph.nodes[sid].type == "approval":
                approvals = True
        if failed is not None:
            error = self.errors.get(failed) or {}
            return "failed", {"step_id": failed, "message": error.get("message", "failed")}
        if ended:
            return "succeeded", None
        return ("paused" if approvals and not running else "running"), None

    def output(self) -> dict[str, Any]:
        """The run's output: what its final (sink) steps produced."""
        return {
            sid: self.outputs.get(sid)
            for sid in self.graph.sinks
            if self.statuses.get(sid) == StepStatus.SUCCEEDED
        }
