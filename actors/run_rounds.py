"""Rounds of a run's state machine, planned on a copy of its state: skips, pure steps computed
inline, starts of the other steps, and the run's own status; and the pure rounds that follow
one, planned ahead. Pure work: nothing here is started, written or told (RunActor does that
once a round is committed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors import commands
from actors.graph import next_steps
from actors.run_state import RunState
from actors.run_store import Event, StepChange, Transition
from actors.steps import EXECUTORS, PURE_STEPS, READS_CONTEXT
from actors.steps.context import StepContext, StepFailed
from actors.templates import TemplateError, render

# A round: its transition, the state it leads to, and the steps to launch once it is committed.
Round = tuple[Transition, RunState, list[tuple[str, int]]]
# Pure rounds planned ahead at most (a chain of pure steps longer than this is sent in parts).
MAX_ROUNDS = 64
# A step attempt's context over a state, with the template scope when already built.
ContextOf = Callable[[str, int, RunState, dict[str, Any] | None], StepContext]


async def plan(
    t: Transition, scratch: RunState, context_of: ContextOf, among: set[str] | None = None
) -> tuple[list[tuple[str, int]], bool]:
    """One round of scheduling, then the run's own status, added to `t` and `scratch`
    (`among`: the only steps that may have become ready, as `next_steps` takes it).

    Returns the steps to launch once committed, and whether a pure step was computed (so
    another round may be ready after this one is committed).
    """
    launches, computed = await _schedule(t, scratch, context_of, among)
    _settle(t, scratch)
    return launches, computed


async def plan_ahead(after: Round, limit: int, context_of: ContextOf) -> tuple[list[Round], bool]:
    """Up to `limit` rounds after the round `after`, each on a copy of the state before it;
    and whether more may be ready after the last of them (it computed a pure step)."""
    rounds: list[Round] = []
    previous, scratch, _ = after
    while len(rounds) < limit:
        # The round before started everything that was ready, and launched nothing: only
        # the successors of what it changed can be ready now.
        among = scratch.graph.successors([c.step_id for c in previous.steps])
        scratch, t = scratch.copy(), Transition()
        launches, computed = await plan(t, scratch, context_of, among)
        if not t:
            return rounds, False
        rounds.append((t, scratch, launches))
        if not computed or launches or scratch.terminal:
            return rounds, False
        previous = t
    return rounds, True


async def _schedule(
    t: Transition, scratch: RunState, context_of: ContextOf, among: set[str] | None
) -> tuple[list[tuple[str, int]], bool]:
    """Add one round of skips, pure step results and starts to `t`."""
    launches: list[tuple[str, int]] = []
    if scratch.terminal:
        return launches, False
    statuses = scratch.effective_statuses()
    start, skip = next_steps(scratch.graph, statuses, scratch.outputs, among)
    for sid in skip:
        scratch.record(t, StepChange(sid, "skipped", scratch.attempts[sid]), "step.skipped")
    computed = False
    for sid in start:
        attempt = scratch.attempts[sid] + 1
        if scratch.graph.nodes[sid].type in PURE_STEPS:
            await _run_pure(t, scratch, context_of, sid, attempt)
            computed = True
        else:
            scratch.record(t, StepChange(sid, "running", attempt), "step.started")
            launches.append((sid, attempt))
    return launches, computed


async def _run_pure(
    t: Transition, scratch: RunState, context_of: ContextOf, sid: str, attempt: int
) -> None:
    t.events.append(Event("step.started", sid, {"attempt": attempt}))
    node = scratch.graph.nodes[sid]
    # Built once, and only where something reads it (a template in the config, or a step
    # that reads the context): the template and the step see the same one.
    scope = scratch.scope() if node.templated or node.type in READS_CONTEXT else {}
    try:
        config = render(node.config, scope)
        output = await EXECUTORS[node.type](context_of(sid, attempt, scratch, scope), config)
    except (StepFailed, TemplateError) as exc:
        error = exc if isinstance(exc, StepFailed) else StepFailed(str(exc), retryable=False)
        change = StepChange(sid, "failed", attempt, error=error.as_error())
        scratch.record(t, change, "step.failed", error=error.as_error())
        return
    change = StepChange(sid, "succeeded", attempt, output=output)
    scratch.record(t, change, "step.succeeded", output=output)


def _settle(t: Transition, scratch: RunState) -> None:
    """Move the run's own status where its steps say it belongs."""
    if scratch.terminal:
        return
    status, error = scratch.verdict()
    if status == scratch.run_status:
        return
    if status == "failed":
        commands.cancel_in_flight(scratch, t, "another step failed")
    if status == "succeeded":
        t.run_output = scratch.output()
    event = {"running": "run.resumed" if scratch.run_status == "paused" else "run.started"}
    t.run(status, event.get(status, f"run.{status}"), error)
    scratch.run_status = status
