"""The local compute backend: each training job runs the worker (`runtime.compute.trainer`) in a
subprocess, at most `max_concurrent` at once; the rest wait in an aiojobs queue.

`run` returns when the job has ended, with an `Outcome`; meanwhile every message the worker
writes reaches `on_message` as a dict, in order, one call at a time. The worker's stderr (an
estimator's `verbose` output, a traceback) arrives as `log` messages too, and its last lines
explain a failure the worker could not report itself. `cancel` and `max_runtime_s` stop the
worker's whole process group: SIGTERM, then SIGKILL if it has not gone within the grace period.

A queued job that is cancelled is answered at once and never starts a process. Its aiojobs job is
not closed early: aiojobs 1.4 lets the next queued job start past the limit when a pending one is
closed, so the cancelled one waits for its turn and then returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

import aiojobs

from runtime.compute.protocol import (
    ArtifactMessage,
    ErrorMessage,
    LogMessage,
    Message,
    Outcome,
    OutcomeStatus,
    ProtocolError,
    ResultMessage,
    StartedMessage,
    TrainSpec,
    decode,
    to_dict,
)

OnMessage = Callable[[dict[str, Any]], Awaitable[None]]
WORKER = "runtime.compute.trainer"
LINE_LIMIT = 16 * 1024 * 1024  # a result message lists every feature; give it room
STDERR_TAIL = 20
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


class JobAlreadyRunning(Exception):
    """A job with this id is already queued or running."""


class TrainerClosed(Exception):
    """The local trainer is closed and takes no new jobs."""


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A snapshot of one live job."""

    job_id: str
    state: JobState
    pid: int | None


@dataclass(eq=False)
class _Job:
    spec: TrainSpec
    on_message: OnMessage
    max_runtime_s: float | None
    outcome: asyncio.Future[Outcome]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    deliver: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: JobState = JobState.QUEUED
    process: asyncio.subprocess.Process | None = None
    abandoned: bool = False  # run() was cancelled: nobody listens any more


@dataclass
class _Report:
    """What the worker said that decides the outcome."""

    result: ResultMessage | None = None
    artifact: ArtifactMessage | None = None
    error: ErrorMessage | None = None
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL))

    def note(self, message: Message) -> None:
        if isinstance(message, ResultMessage):
            self.result = message
        elif isinstance(message, ArtifactMessage):
            self.artifact = message
        elif isinstance(message, ErrorMessage):
            self.error = message

    def outcome(self, returncode: int | None) -> Outcome:
        if returncode == 0 and self.result and self.artifact:
            return Outcome(OutcomeStatus.SUCCEEDED, self.result, self.artifact)
        if self.error:
            return Outcome(OutcomeStatus.FAILED, message=self.error.message)
        if returncode is not None and returncode < 0:
            reason = f"the worker was killed by {signal.Signals(-returncode).name}"
        elif returncode == 0:
            reason = "the worker exited without reporting a result"
        else:
            reason = f"the worker exited with code {returncode}"
        tail = "\n".join(self.stderr)
        return Outcome(OutcomeStatus.FAILED, message=f"{reason}: {tail}" if tail else reason)


class LocalTrainer:
    """Runs training jobs in worker subprocesses, `max_concurrent` at a time."""

    def __init__(
        self,
        max_concurrent: int = 2,
        python: str = sys.executable,
        *,
        max_queued: int = 1000,
        kill_grace_s: float = 5.0,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._python = python
        self._kill_grace_s = kill_grace_s
        # Beyond max_queued waiting jobs, run() itself waits for room in the queue.
        self._scheduler = aiojobs.Scheduler(limit=max_concurrent, pending_limit=max_queued)
        self._jobs: dict[str, _Job] = {}
        self._closed = False

    @property
    def running_count(self) -> int:
        return sum(job.state is JobState.RUNNING for job in self._jobs.values())

    @property
    def queued_count(self) -> int:
        return sum(job.state is JobState.QUEUED for job in self._jobs.values())

    def describe(self, job_id: str) -> JobInfo | None:
        """The job's state and worker pid, or None when no such job is live."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        return JobInfo(job_id, job.state, job.process.pid if job.process else None)

    async def run(
        self, spec: TrainSpec, on_message: OnMessage, max_runtime_s: float | None = None
    ) -> Outcome:
        """Queue the job, run it when a slot is free, and return how it ended.

        `max_runtime_s` counts from the start of the worker, not from queueing. An exception
        raised by `on_message` stops the worker and propagates from here.
        """
        if self._closed:
            raise TrainerClosed
        if spec.job_id in self._jobs:
            raise JobAlreadyRunning(f"job {spec.job_id} is already queued or running")
        if max_runtime_s is not None and max_runtime_s <= 0:
            raise ValueError("max_runtime_s must be positive")
        loop = asyncio.get_running_loop()
        job = _Job(spec, on_message, max_runtime_s, loop.create_future())
        self._jobs[spec.job_id] = job
        try:
            await self._scheduler.spawn(self._execute(job), name=f"train:{spec.job_id}")
            return await asyncio.shield(job.outcome)
        except BaseException:
            job.abandoned = True
            self._stop(job)
            raise

    def cancel(self, job_id: str) -> bool:
        """Stop a job: a queued one never starts, a running one's process is terminated.
        Its `run` then returns a cancelled outcome. False when no such job is live."""
        job = self._jobs.get(job_id)
        if job is None:
            return False
        self._stop(job)
        return True

    async def close(self) -> None:
        """Cancel every job and wait for their processes to end."""
        self._closed = True
        for job in list(self._jobs.values()):
            self._stop(job)
        await self._scheduler.wait_and_close(timeout=self._kill_grace_s + 5)

    async def __aenter__(self) -> LocalTrainer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _stop(self, job: _Job) -> None:
        job.stop.set()
        if job.state is JobState.QUEUED:
            self._settle(job, Outcome(OutcomeStatus.CANCELLED, message="cancelled while queued"))
            self._forget(job)

    def _forget(self, job: _Job) -> None:
        if self._jobs.get(job.spec.job_id) is job:
            del self._jobs[job.spec.job_id]

    @staticmethod
    def _settle(job: _Job, outcome: Outcome | BaseException) -> None:
        if job.outcome.done() or job.abandoned:
            return
        if isinstance(outcome, Outcome):
            job.outcome.set_result(outcome)
        else:
            job.outcome.set_exception(outcome)

    async def _execute(self, job: _Job) -> None:
        """The aiojobs job: supervise the worker unless the job was cancelled while queued."""
        if job.stop.is_set():
            return
        job.state = JobState.RUNNING  # holds a slot from here on, even before its process starts
        try:
            self._settle(job, await self._supervise(job))
        except asyncio.CancelledError:  # aiojobs gave up waiting for it in close()
            self._settle(job, Outcome(OutcomeStatus.CANCELLED, message="the trainer was closed"))
            raise
        except Exception as exc:
            self._settle(job, exc)
        finally:
            self._forget(job)

    async def _supervise(self, job: _Job) -> Outcome:
        try:
            process = job.process = await self._start(job.spec)
        except OSError as exc:  # a wrong `python`, too many processes
            return Outcome(OutcomeStatus.FAILED, message=f"cannot start the worker: {exc}")
        stdout, stderr = process.stdout, process.stderr
        assert stdout is not None and stderr is not None  # noqa: S101 - both are pipes
        report = _Report()
        try:
            await self._deliver(job, StartedMessage(pid=process.pid))
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._read_stdout(job, stdout, report))
                    group.create_task(self._read_stderr(job, stderr, report))
                    stopped = await self._wait(job, process)
            except BaseExceptionGroup as failed:  # on_message raised: let its error through
                raise failed.exceptions[0] from None
        finally:
            if process.returncode is None:
                await asyncio.shield(self._terminate(process))
        if stopped is OutcomeStatus.CANCELLED:
            return Outcome(stopped, message="cancelled while running")
        if stopped is OutcomeStatus.TIMED_OUT:
            return Outcome(stopped, message=f"stopped after max_runtime_s={job.max_runtime_s}")
        return report.outcome(process.returncode)

    async def _start(self, spec: TrainSpec) -> asyncio.subprocess.Process:
        # The worker must import this very checkout, installed or not.
        path = os.pathsep.join(p for p in (_PROJECT_ROOT, os.environ.get("PYTHONPATH")) if p)
        process = await asyncio.create_subprocess_exec(
            self._python,
            "-m",
            WORKER,
            "-",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
            start_new_session=True,  # its own process group, so a stop reaches its children
            env={**os.environ, "PYTHONPATH": path},
        )
        assert process.stdin is not None  # noqa: S101 - a pipe
        with contextlib.suppress(ConnectionError):  # it died at once; its exit code will say why
            process.stdin.write(spec.to_json().encode())
            await process.stdin.drain()
        process.stdin.close()
        return process

    async def _wait(self, job: _Job, process: asyncio.subprocess.Process) -> OutcomeStatus | None:
        """Until the worker exits (None), or is stopped by a cancel or by its time limit."""
        exited = asyncio.ensure_future(process.wait())
        stopped = asyncio.ensure_future(job.stop.wait())
        try:
            done, _ = await asyncio.wait(
                {exited, stopped}, timeout=job.max_runtime_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            exited.cancel()
            stopped.cancel()
        if exited in done:
            return None
        await self._terminate(process)
        return OutcomeStatus.CANCELLED if stopped in done else OutcomeStatus.TIMED_OUT

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        self._signal(process, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self._kill_grace_s)
        except TimeoutError:
            self._signal(process, signal.SIGKILL)
            await process.wait()

    @staticmethod
    def _signal(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)

    async def _read_stdout(self, job: _Job, stream: asyncio.StreamReader, report: _Report) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than LINE_LIMIT: dropped, or its tail read as a line
                await self._deliver(job, _log("dropped an over-long worker output line"))
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").strip()
            if not text:
                continue
            try:
                message = decode(text)
            except ProtocolError:
                message = _log(f"unparsed worker output: {text[:2000]}")
            report.note(message)
            await self._deliver(job, message)

    async def _read_stderr(self, job: _Job, stream: asyncio.StreamReader, report: _Report) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                report.stderr.append(text)
                await self._deliver(job, LogMessage(level="info", message=text))

    async def _deliver(self, job: _Job, message: Message) -> None:
        # One call at a time, so stdout and stderr messages never overlap in the handler.
        async with job.deliver:
            if not job.abandoned:
                await job.on_message(to_dict(message))


def _log(text: str) -> LogMessage:
    return LogMessage(level="warning", message=text)
