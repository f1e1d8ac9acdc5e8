"""``dataset_profile``: profile a dataset version."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.steps.base import StepType, config_object, id_string, output_object
from actors.steps.context import StepContext

STEP = StepType(
    type="dataset_profile",
    name="Profile dataset",
    description=(
        "Compute row count and per-column statistics of a dataset version, with warnings "
        "about likely problems (missing values, constant columns, ...)."
    ),
    category="ml",
    config_schema=config_object(
        {
            "dataset_id": id_string("Identifier of the dataset."),
            "version": {
                "type": "integer",
                "minimum": 1,
                "description": "Dataset version; absent means the latest.",
            },
        },
        required=["dataset_id"],
    ),
    output_schema=output_object(
        {
            "dataset_id": {"type": "string", "description": "The profiled dataset."},
            "version": {"type": "integer", "minimum": 1, "description": "Version profiled."},
            "row_count": {"type": "integer", "minimum": 0, "description": "Number of rows."},
            "columns": {
                "type": "array",
                "description": "Per-column statistics.",
                "items": {
                    "type": "object",
                    "required": ["name", "type"],
                    "properties": {
                        "name": {"type": "string"},
                        "type": {"type": "string"},
                        "null_count": {"type": "integer", "minimum": 0},
                        "distinct_count": {"type": "integer", "minimum": 0},
                    },
                },
            },
            "warnings": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Human-readable data quality warnings.",
            },
        }
    ),
    example={"dataset_id": "{{ input.dataset_id }}", "version": 3},
)


async def execute(ctx: StepContext, config: Mapping[str, Any]) -> Any:
    """Runs through the platform on behalf of the run's owner."""
    return await ctx.platform.call(STEP.type, config)
