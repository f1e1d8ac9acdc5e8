"""``transform``: build a JSON object from templates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.steps.base import DIALECT, StepType, config_object
from actors.steps.context import StepContext

STEP = StepType(
    type="transform",
    name="Transform",
    description=(
        "Build a JSON object from the run context: every template in output is rendered "
        "and the result becomes the step output. Use it to reshape or rename values "
        "for later steps."
    ),
    category="data",
    config_schema=config_object(
        {
            "output": {
                "type": "object",
                "description": "The object to produce; values (nested too) may be templates.",
            },
        },
        required=["output"],
    ),
    output_schema={
        "$schema": DIALECT,
        "type": "object",
        "description": "The rendered output object.",
    },
    example={
        "output": {
            "model_version_id": "{{ steps.train.output.model_version_id }}",
            "accuracy": "{{ steps.train.output.metrics.accuracy }}",
            "summary": "trained on {{ input.dataset_id }}",
        }
    },
)


async def execute(ctx: StepContext, config: Mapping[str, Any]) -> Any:
    """The output is the config's `output`, templates already rendered against the run."""
    return config["output"]
