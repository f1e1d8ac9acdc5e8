"""``subworkflow``: start another workflow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from actors.steps.base import StepType, config_object, id_string, output_object
from actors.steps.context import StepContext, StepFailed, Wait

STEP = StepType(
    type="subworkflow",
    name="Sub-workflow",
    description=(
        "Start a run of another workflow's published version with the given input. With "
        "wait (the default) the step finishes when that run does and fails if it fails; "
        "without, it finishes as soon as the run has been started."
    ),
    category="control",
    config_schema=config_object(
        {
            "workflow_id": id_string("Identifier of the workflow to run."),
            "input": {
                "type": "object",
                "description": "Input of the child run; values may be templates.",
            },
            "wait": {
                "type": "boolean",
                "default": True,
                "description": "Wait for the child run to finish.",
            },
        },
        required=["workflow_id"],
    ),
    output_schema=output_object(
        {
            "run_id": {"type": "string", "description": "The child run."},
            "status": {"type": "string", "description": "The child run's status."},
            "output": {"description": "The child run's output; null when not waited for."},
        }
    ),
    example={
        "workflow_id": "nightly-retrain",
        "input": {"dataset_id": "{{ input.dataset_id }}"},
        "wait": True,
    },
)


async def execute(ctx: StepContext, config: Mapping[str, Any]) -> Any:
    """Start the child run (once per attempt, even across restarts); wait for it if asked."""
    try:
        workflow_id = UUID(str(config["workflow_id"]))
    except ValueError as exc:
        raise StepFailed("workflow_id must be a workflow's id", retryable=False) from exc
    child_id = await ctx.platform.start_child(workflow_id, config.get("input") or {})
    if config.get("wait", True):
        return Wait(data={"child_run_id": str(child_id)})
    return {"run_id": str(child_id), "status": "pending", "output": None}
