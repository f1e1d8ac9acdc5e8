"""What a step sees while it executes, and what it can answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import aiohttp


class StepPlatform(Protocol):
    """What steps may ask of Stepwell beyond HTTP: each call is bound to one step attempt and
    is idempotent for it, so a step re-run after a restart finds what it started."""

    async def start_child(self, workflow_id: UUID, run_input: Mapping[str, Any]) -> UUID:
        """Start (or find) the child run of a subworkflow step."""
        ...

    async def start_training(self, request: Mapping[str, Any]) -> UUID:
        """Start (or find) the training job of a train step."""
        ...

    async def call(self, operation: str, config: Mapping[str, Any]) -> Any:
        """Run a registry operation (deploy, predict, batch_predict, dataset_profile)."""
        ...


class StepFailed(Exception):
    """The step did not succeed. `retryable` says whether the retry policy may try again."""

    def __init__(
        self, message: str, *, retryable: bool = True, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.details = dict(details or {})

    def as_error(self) -> dict[str, Any]:
        return {"message": self.message, "retryable": self.retryable, **self.details}


@dataclass(frozen=True, slots=True)
class Wait:
    """The step is waiting for a moment (`wake_at`) or an outside event (approval, child run)."""

    wake_at: datetime | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepContext:
    """One attempt of one step of one run."""

    run_id: UUID
    step_id: str
    attempt: int
    owner_id: str
    scope: Mapping[str, Any]
    http: aiohttp.ClientSession
    platform: StepPlatform

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts and restarts, so outside systems can de-duplicate."""
        return f"{self.run_id}:{self.step_id}"


Executor = Callable[[StepContext, Mapping[str, Any]], Awaitable[Any]]
