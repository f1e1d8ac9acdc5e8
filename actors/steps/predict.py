"""``predict``: online prediction with a model version."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.steps.base import StepType, config_object, id_string, output_object
from actors.steps.context import StepContext

STEP = StepType(
    type="predict",
    name="Predict",
    description=(
        "Run a model version on one record or a list of records and return the "
        "predictions, with class probabilities when return_confidence is set."
    ),
    category="ml",
    config_schema=config_object(
        {
            "model_version_id": id_string("Model version to predict with."),
            "input_data": {
                "type": ["object", "array"],
                "items": {"type": "object"},
                "minItems": 1,
                "maxItems": 10000,
                "description": "One record (feature name to value) or a list of records.",
            },
            "return_confidence": {
                "type": "boolean",
                "default": False,
                "description": "Also return class probabilities.",
            },
        },
        required=["model_version_id", "input_data"],
    ),
    output_schema=output_object(
        {
            "prediction_id": {"type": "string", "description": "The logged prediction."},
            "predictions": {"type": "array", "description": "One prediction per record."},
            "probabilities": {
                "type": ["array", "null"],
                "description": "Per-record class probabilities; null unless requested.",
            },
        }
    ),
    example={
        "model_version_id": "{{ steps.train.output.model_version_id }}",
        "input_data": [{"tenure_months": 4, "plan": "basic"}],
        "return_confidence": True,
    },
)


async def execute(ctx: StepContext, config: Mapping[str, Any]) -> Any:
    """Runs through the platform on behalf of the run's owner."""
    return await ctx.platform.call(STEP.type, config)
