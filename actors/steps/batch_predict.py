"""``batch_predict``: batch prediction over stored files."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.steps.base import URI_PATTERN, StepType, config_object, id_string, output_object
from actors.steps.context import StepContext


def _uri(description: str) -> dict[str, object]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": 2048,
        "pattern": URI_PATTERN,
        "description": description,
    }


STEP = StepType(
    type="batch_predict",
    name="Batch predict",
    description=(
        "Run a model version over every record in input_path and write the predictions "
        "to output_path. Rows that cannot be scored are counted in failed_rows."
    ),
    category="ml",
    config_schema=config_object(
        {
            "model_version_id": id_string("Model version to predict with."),
            "input_path": _uri("URI of the input records, e.g. gs://bucket/in.jsonl."),
            "output_path": _uri("URI to write predictions to, e.g. gs://bucket/out/."),
        },
        required=["model_version_id", "input_path", "output_path"],
    ),
    output_schema=output_object(
        {
            "job_id": {"type": "string", "description": "The batch job."},
            "rows": {"type": "integer", "minimum": 0, "description": "Rows scored."},
            "failed_rows": {
                "type": "integer",
                "minimum": 0,
                "description": "Rows that could not be scored.",
            },
            "output_path": {"type": "string", "description": "Where predictions were written."},
        }
    ),
    example={
        "model_version_id": "{{ steps.train.output.model_version_id }}",
        "input_path": "gs://acme-ml/churn/scoring/{{ input.date }}.jsonl",
        "output_path": "gs://acme-ml/churn/predictions/{{ input.date }}/",
    },
)


async def execute(ctx: StepContext, config: Mapping[str, Any]) -> Any:
    """Runs through the platform on behalf of the run's owner."""
    return await ctx.platform.call(STEP.type, config)
