"""``evaluate``: gate on a metric threshold."""

from __future__ import annotations

from actors.steps.base import StepType, config_object, output_object

STEP = StepType(
    type="evaluate",
    name="Evaluate metric",
    description=(
        "Compare one metric against a threshold. The step succeeds either way; "
        "output.passed tells whether the metric met the threshold, so a following "
        "condition step can branch on it. A missing metric does not pass."
    ),
    category="ml",
    config_schema=config_object(
        {
            "metric": {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "description": "Name of the metric to check, e.g. accuracy.",
            },
            "threshold": {"type": "number", "description": "Value to compare against."},
            "comparison": {
                "type": "string",
                "enum": ["gte", "gt", "lte", "lt"],
                "default": "gte",
                "description": "How the metric must relate to the threshold.",
            },
            "metrics": {
                "type": "object",
                "additionalProperties": {"type": ["number", "null"]},
                "description": (
                    "Metrics by name, usually a template such as {{ steps.train.output.metrics }}."
                ),
            },
        },
        required=["metric", "threshold", "metrics"],
    ),
    output_schema=output_object(
        {
            "passed": {"type": "boolean", "description": "Whether the threshold was met."},
            "metric": {"type": "string", "description": "The metric checked."},
            "value": {
                "type": ["number", "null"],
                "description": "The metric's value; null when missing.",
            },
            "threshold": {"type": "number", "description": "The threshold used."},
        }
    ),
    example={
        "metric": "accuracy",
        "threshold": 0.85,
        "comparison": "gte",
        "metrics": "{{ steps.train.output.metrics }}",
    },
)
