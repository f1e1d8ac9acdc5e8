"""RunActor: owns one run's state machine and executes its steps.

Every change goes through `_commit`: plan it on a copy of the state (actors/run_rounds.py),
have the process's `RunWriter` commit it (one fenced statement, shared with other runs'
changes), then adopt the copy, start tasks and timers, and ring the bus. Steps run as tasks
owned by the actor and report back by message, so the state is only ever touched by one
message at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from actors import commands
from actors.base import Actor, ActorStopped, MailboxFull
from actors.graph import StepStatus
from actors.run_insert import PendingInsert, RunNotCreated
from actors.run_messages import Poke, RunServices, StepFinished, TimerFired
from actors.run_rounds import MAX_ROUNDS, Round, plan, plan_ahead
from actors.run_state import TERMINAL_RUN, RunState
from actors.run_store import LeaseLost, StepChange, Transition
from actors.step_platform import RunStepPlatform
from actors.steps import EXECUTORS, delay
from actors.steps.context import StepContext, StepFailed, Wait
from actors.templates import TemplateError, render
from runtime.shards import Lease
from runtime.sql import queries

log = logging.getLogger(__name__)
DEADLINE = "__deadline__"


def _consume(future: asyncio.Future[int | None]) -> None:
    """Mark an abandoned commit's outcome as seen (it is moot once its predecessor failed)."""
    if not future.cancelled():
        future.exception()


class RunActor(Actor):
    """The only writer of one run while this process holds the run's shard."""

    def __init__(
        self,
        run_id: UUID,
        services: RunServices,
        created: Mapping[str, Any] | None = None,
        pending: PendingInsert | None = None,
    ) -> None:
        super().__init__(str(run_id))
        self.run_id = run_id
        self.services = services
        # The row of a run just created by this process: nothing to read back, and no command
        # can predate this actor (one sent meanwhile finds it and pokes it).
        self.created = created
        # The insert of that row, when it is still on its way: `created` is then the row as
        # the insert will return it, and the actor plans its first rounds meanwhile.
        self.pending = pending
        self.run: dict[str, Any] = {}
        self.run_state: RunState | None = None
        self.lease: Lease | None = None
        # The run's last committed event seq: where the rounds planned after it must find it.
        self.seq = 0
        # The run as get_run_detail reads it, right after the commit that ended it, when that
        # commit returned it (see RunWriter.ended): start-and-wait answers with it.
        self.ended: dict[str, Any] | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def on_start(self) -> None:
        pool = self.services.pool
        row = self.created or await pool.fetchrow(queries["get_run_for_actor"], self.run_id)
        if row is None:
            self.stop()
            return
        self.run = dict(row)
        self.seq = row["last_seq"]
        self.lease = self.services.lease_for(row["shard"])
        if self.lease is None:
            raise LeaseLost(f"shard {row['shard']} is not ours")
        # A pending run has no steps yet: its first steps are written with its start.
        pending = row["status"] == "pending"
        steps = [] if pending else await pool.fetch(queries["list_run_steps"], self.run_id)
        self.run_state = RunState.load(self.run, [dict(s) for s in steps])
        if not self.run_state.terminal:
            try:
                await self._recover()
            except RunNotCreated:  # the start was refused (the caller says why): no run
                self.stop()
            return
        # Only a command (a retry) brings an ended run back; its commit starts what is due.
        await self._apply_commands()
        if self._run_state().terminal:
            self.stop()
        else:
            await self._arm_deadline()

    async def _recover(self) -> None:
        """Continue where the run was: re-run the in-flight step, re-arm every wait."""
        state = self._run_state()
        for sid, status in state.statuses.items():
            if status == StepStatus.RUNNING:
                self._launch(sid, state.attempts[sid])  # same attempt, same idempotency key
            elif status == StepStatus.WAITING or state.retry_pending(sid):
                self._arm(sid, state.attempts[sid], state.wake_at.get(sid))
            if status == StepStatus.WAITING and state.graph.nodes[sid].type == "subworkflow":
                await self._check_child(sid, state.attempts[sid])
            if status == StepStatus.WAITING and state.graph.nodes[sid].type == "train":
                await self.services.check_training(self.run, sid, state.attempts[sid])
        scratch = state.copy()
        t = Transition()
        if scratch.run_status == "pending":
            scratch.run_status = "running"
            t.run("running", "run.started")
        await self._commit(t, scratch)
        await self._inserted()
        await self._arm_deadline()
        if self.created is None:
            await self._apply_commands()

    async def _check_child(self, sid: str, attempt: int) -> None:
        """A child that ended while nobody listened (a crash between two commits) still counts."""
        child = await self.services.pool.fetchrow(
            queries["get_child_run"], self.run_id, sid, attempt
        )
        if child is not None and child["status"] in TERMINAL_RUN:
            await self.services.child_finished(dict(child))

    async def on_stop(self) -> None:
        self.services.writer.take_ended(self.run_id)  # not kept for a run that stopped otherwise
        for handle in self.timers.values():
            handle.cancel()
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def is_idle(self) -> bool:
        return not self.tasks and not self.timers

    def _run_state(self) -> RunState:
        assert self.run_state is not None  # noqa: S101 - set in on_start before any message
        return self.run_state

    # -- messages ----------------------------------------------------------------------------

    async def receive(self, message: object) -> Any:
        if isinstance(message, Poke):
            await self._apply_commands()
        elif isinstance(message, StepFinished):
            await self._step_finished(message)
        elif isinstance(message, TimerFired):
            await self._timer_fired(message)
        return None

    async def _apply_commands(self) -> None:
        rows = await self.services.pool.fetch(queries["list_pending_commands"], self.run_id)
        scratch = self._run_state().copy()
        t = Transition(commands=[r["id"] for r in rows])
        outcomes = [commands.apply(scratch, t, dict(r)) for r in rows]
        t.outcome = "; ".join(outcomes) if outcomes else None
        await self._commit(t, scratch)

    async def _step_finished(self, msg: StepFinished) -> None:
        self.tasks.pop(msg.step_id, None)
        state = self._run_state()
        if state.statuses.get(msg.step_id) != StepStatus.RUNNING:
            return  # the run was cancelled or failed meanwhile; this result is not wanted
        if state.attempts[msg.step_id] != msg.attempt:
            return
        scratch = state.copy()
        t = Transition()
        attempt = msg.attempt
        if msg.wait is not None:
            change = StepChange(msg.step_id, "waiting", attempt, wake_at=msg.wait.wake_at)
            scratch.record(t, change, "step.waiting", **dict(msg.wait.data))
        elif msg.error is not None:
            commands.failed_attempt(scratch, t, msg.step_id, attempt, msg.error)
        else:
            change = StepChange(msg.step_id, "succeeded", attempt, output=msg.output)
            scratch.record(t, change, "step.succeeded", output=msg.output)
        await self._commit(t, scratch)

    async def _timer_fired(self, msg: TimerFired) -> None:
        self.timers.pop(msg.key, None)
        state = self._run_state()
        scratch = state.copy()
        t = Transition()
        if msg.key == DEADLINE:
            if not state.terminal:
                seconds = self.run.get("timeout_s")
                error = {"message": f"run timed out after {seconds} s", "code": "run_timeout"}
                scratch.run_status = "failed"
                t.run("failed", "run.failed", error)
                commands.cancel_in_flight(scratch, t, "run timed out")
            await self._commit(t, scratch)
            return
        sid = msg.key
        if scratch.attempts.get(sid) != msg.attempt:
            return
        if scratch.retry_pending(sid):
            scratch.wake_at[sid] = None  # due: the scheduler starts the next attempt
        elif scratch.statuses.get(sid) == StepStatus.WAITING:
            self._wait_over(scratch, t, sid)
        await self._commit(t, scratch)

    def _wait_over(self, scratch: RunState, t: Transition, sid: str) -> None:
        node = scratch.graph.nodes[sid]
        attempt = scratch.attempts[sid]
        now = datetime.now(UTC)
        if node.type == "delay":
            output = delay.woke(scratch.started_at.get(sid), now)
            scratch.record(
                t,
                StepChange(sid, "succeeded", attempt, output=output),
                "step.succeeded",
                output=output,
            )
        elif node.type == "approval":
            commands.approval_timed_out(scratch, t, sid)

    # -- planning and committing -------------------------------------------------------------

    async def _commit(self, t: Transition, scratch: RunState) -> None:
        """Schedule what became ready, settle the run's status, persist, then act.

        Steps computed inline (pure ones) are committed round by round, each round in its own
        commit: a step's result is durable before anything is started or told from it. The
        pure rounds that follow are planned ahead, each on a copy of the state before it
        (pure work: nothing started, nobody told), and handed to the writer together: it
        commits them in order, each in its own transaction, and applies a round only where
        the one before it left the run. The actor then adopts them one by one.

        A longer chain of pure steps goes in batches of MAX_ROUNDS rounds, the next batch
        planned while the one before it commits.
        """
        launches, computed = await plan(t, scratch, self._context)
        if not t:
            return
        batch: list[Round] = [(t, scratch, launches)]
        more = computed and not launches and not scratch.terminal
        if more:
            ahead, more = await plan_ahead(batch[0], MAX_ROUNDS - 1, self._context)
            batch += ahead
        while batch:
            commits = await self._send(batch)
            following: list[Round] = []
            if more:  # planned while `batch` is sent and committed
                await asyncio.sleep(0)  # the writer puts it on the wire first
                following, more = await plan_ahead(batch[-1], MAX_ROUNDS, self._context)
            if await self._adopt_batch(batch, commits):
                return
            batch = following

    async def _adopt_batch(
        self, batch: list[Round], commits: list[asyncio.Future[int | None]]
    ) -> bool:
        """Adopt each round of `batch` once committed; True when one of them ended the run."""
        await self._inserted()
        for index, ((t, scratch, launches), committed) in enumerate(
            zip(batch, commits, strict=True)
        ):
            try:
                base = await committed
            except BaseException:
                for later in commits[index + 1 :]:  # never applied: a predecessor did not
                    later.add_done_callback(_consume)
                raise
            if base is None:  # sent before its predecessor had committed: send it again
                base = await self._submit(t)
            assert base is not None  # noqa: S101 - a change sent alone always applies
            self.seq = base + len(t.events)
            await self._adopt(t, scratch, launches)
            if scratch.terminal:
                await self._finish(t)
                return True
        return False

    async def _send(self, batch: list[Round]) -> list[asyncio.Future[int | None]]:
        """Hand consecutive rounds to the writer, each to apply where the one before it
        leaves the run; with the run's insert when it is this actor's to send, otherwise
        once the run's row is in."""
        assert self.lease is not None  # noqa: S101 - set in on_start
        rounds = [t for t, _, _ in batch]
        after: list[int | None] = [None]
        seq = self.seq
        for previous in rounds[:-1]:
            seq += len(previous.events)
            after.append(seq)
        writer = self.services.writer
        if self.pending is not None and self.pending.to_send:
            return self.pending.send(writer, self.run_id, self.lease, rounds, after)
        await self._inserted()
        return writer.submit_rounds(self.run_id, self.lease, rounds, after)

    async def _inserted(self) -> None:
        """Wait for the run's row when its insert is still on its way; then take that row."""
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        row = await pending.row()
        self.run = {**dict(row), "definition": self.run["definition"]}

    def _submit(self, t: Transition, after_seq: int | None = None) -> asyncio.Future[int | None]:
        assert self.lease is not None  # noqa: S101 - set in on_start
        return self.services.writer.submit(self.run_id, self.lease, t, after_seq)

    async def _adopt(
        self, t: Transition, scratch: RunState, launches: list[tuple[str, int]]
    ) -> None:
        """After the commit: take the new state, start and stop tasks, arm timers, tell."""
        self.run_state = scratch
        for change in t.steps:
            # Work waited on elsewhere stops with its step: a cancelled train step's job.
            if change.status == "cancelled" and scratch.graph.nodes[change.step_id].type == "train":
                await self.services.cancel_training(self.run_id, change.step_id, change.attempt)
        for sid in [s for s in self.tasks if scratch.statuses.get(s) != StepStatus.RUNNING]:
            self.tasks.pop(sid).cancel()
        for sid, attempt in launches:
            self._launch(sid, attempt)
        for change in t.steps:
            if change.wake_at is not None:
                self._arm(change.step_id, change.attempt, change.wake_at)
        self.services.bus.published(self.run_id)

    async def _finish(self, t: Transition) -> None:
        self.ended = self.services.writer.take_ended(self.run_id)
        self.services.run_ended(self._run_state().run_status)
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        if self.run.get("parent_run_id") is not None:
            final = {
                "status": self._run_state().run_status,
                "output": t.run_output,
                "error": t.run_error,
            }
            await self.services.child_finished({**self.run, **final})
        self.stop()

    # -- steps and timers --------------------------------------------------------------------

    def _context(
        self, sid: str, attempt: int, state: RunState, scope: dict[str, Any] | None = None
    ) -> StepContext:
        platform = RunStepPlatform(self.services, self.run, sid, attempt)
        return StepContext(
            self.run_id,
            sid,
            attempt,
            self.run["owner_id"],
            state.scope() if scope is None else scope,
            self.services.http,
            platform,
        )

    def _launch(self, sid: str, attempt: int) -> None:
        state = self._run_state()
        node = state.graph.nodes[sid]
        ctx = self._context(sid, attempt, state)
        self.tasks[sid] = asyncio.create_task(
            self._execute(ctx, node.type, node.config, node.timeout_s)
        )

    async def _execute(
        self, ctx: StepContext, step_type: str, config: Mapping[str, Any], timeout_s: float | None
    ) -> None:
        result = StepFinished(ctx.step_id, ctx.attempt)
        try:
            executor = EXECUTORS.get(step_type)
            if executor is None:
                raise StepFailed(f"step type {step_type!r} cannot be executed yet", retryable=False)
            async with asyncio.timeout(timeout_s):
                value = await executor(ctx, render(config, ctx.scope))
            if isinstance(value, Wait):
                result = StepFinished(ctx.step_id, ctx.attempt, wait=value)
            else:
                result = StepFinished(ctx.step_id, ctx.attempt, output=value)
        except StepFailed as exc:
            result = StepFinished(ctx.step_id, ctx.attempt, error=exc)
        except TemplateError as exc:
            result = StepFinished(
                ctx.step_id, ctx.attempt, error=StepFailed(str(exc), retryable=False)
            )
        except TimeoutError:
            error = StepFailed(f"step timed out after {timeout_s} s", details={"code": "timeout"})
            result = StepFinished(ctx.step_id, ctx.attempt, error=error)
        await self._report(result)

    async def _report(self, result: StepFinished) -> None:
        """Hand a step's result to the actor; a full mailbox delays it, never drops it."""
        while True:
            try:
                self.tell(result)
                return
            except MailboxFull:
                await asyncio.sleep(0.05)
            except ActorStopped:
                return  # stopping: recovery re-runs the step with the same idempotency key

    def _arm(self, key: str, attempt: int, wake_at: datetime | None) -> None:
        if wake_at is None:
            return
        if key in self.timers:
            self.timers.pop(key).cancel()
        delay_s = max(0.0, (wake_at - datetime.now(UTC)).total_seconds())
        loop = asyncio.get_running_loop()
        self.timers[key] = loop.call_later(delay_s, self._fire, key, attempt)

    def _fire(self, key: str, attempt: int) -> None:
        try:
            self.tell(TimerFired(key, attempt))
        except MailboxFull:
            loop = asyncio.get_running_loop()
            self.timers[key] = loop.call_later(0.05, self._fire, key, attempt)
        except ActorStopped:
            pass  # the wake time is stored; whoever owns the run next re-arms it

    async def _arm_deadline(self) -> None:
        timeout_s = self.run.get("timeout_s")
        if not timeout_s or self._run_state().terminal:
            return
        deadline = self.run.get("deadline_at")
        if deadline is None:
            deadline = datetime.now(UTC) + timedelta(seconds=float(timeout_s))
            await self.services.pool.execute(queries["set_run_deadline"], self.run_id, deadline)
            self.run["deadline_at"] = deadline
        self._arm(DEADLINE, 0, deadline)
