"""What a run actor is told, and what it needs from the process around it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import aiohttp
import asyncpg

from actors.run_writer import RunWriter
from actors.steps.context import StepFailed, Wait
from runtime.bus import EventBus
from runtime.shards import Lease


@dataclass(frozen=True, slots=True)
class Poke:
    """The run has news in the database (a start or a command): look."""


@dataclass(frozen=True, slots=True)
class StepFinished:
    step_id: str
    attempt: int
    output: Any = None
    error: StepFailed | None = None
    wait: Wait | None = None


@dataclass(frozen=True, slots=True)
class TimerFired:
    key: str
    attempt: int


class RunServices(Protocol):
    """What a run actor needs from the process around it."""

    pool: asyncpg.Pool[Any]
    http: aiohttp.ClientSession
    bus: EventBus
    writer: RunWriter

    def lease_for(self, shard: int) -> Lease | None: ...

    async def start_child(
        self,
        parent: Mapping[str, Any],
        step_id: str,
        attempt: int,
        workflow_id: UUID,
        run_input: Mapping[str, Any],
    ) -> UUID: ...

    async def child_finished(self, run: Mapping[str, Any]) -> None: ...

    def run_ended(self, status: str) -> None: ...

    async def start_training(
        self, run: Mapping[str, Any], step_id: str, attempt: int, request: Mapping[str, Any]
    ) -> UUID: ...

    async def step_operation(
        self, run: Mapping[str, Any], operation: str, config: Mapping[str, Any]
    ) -> Any: ...

    async def check_training(self, run: Mapping[str, Any], step_id: str, attempt: int) -> None: ...

    async def cancel_training(self, run_id: UUID, step_id: str, attempt: int) -> None: ...
