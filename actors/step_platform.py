"""What a run's steps may ask of the rest of Stepwell, bound to one step attempt."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol
from uuid import UUID


class PlatformServices(Protocol):
    """The process-wide services behind every step's platform (the dispatcher)."""

    async def start_child(
        self,
        parent: Mapping[str, Any],
        step_id: str,
        attempt: int,
        workflow_id: UUID,
        run_input: Mapping[str, Any],
    ) -> UUID: ...

    async def start_training(
        self, run: Mapping[str, Any], step_id: str, attempt: int, request: Mapping[str, Any]
    ) -> UUID: ...

    async def step_operation(
        self, run: Mapping[str, Any], operation: str, config: Mapping[str, Any]
    ) -> Any: ...


class RunStepPlatform:
    """The `StepPlatform` of one attempt of one step of one run."""

    def __init__(
        self, services: PlatformServices, run: Mapping[str, Any], step_id: str, attempt: int
    ) -> None:
        self.services = services
        self.run = run
        self.step_id = step_id
        self.attempt = attempt

    async def start_child(self, workflow_id: UUID, run_input: Mapping[str, Any]) -> UUID:
        return await self.services.start_child(
            self.run, self.step_id, self.attempt, workflow_id, run_input
        )

    async def start_training(self, request: Mapping[str, Any]) -> UUID:
        return await self.services.start_training(self.run, self.step_id, self.attempt, request)

    async def call(self, operation: str, config: Mapping[str, Any]) -> Any:
        return await self.services.step_operation(self.run, operation, config)
