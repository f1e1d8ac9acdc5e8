"""``evaluate``: gate on a metric threshold."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

from actors.steps.base import StepType, config_object, output_object
from actors.steps.context import StepContext, StepFailed

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


_COMPARE = {
    "gte": (operator.ge, ">="),
    "gt": (operator.gt, ">"),
    "lte": (operator.le, "<="),
    "lt": (operator.lt, "<"),
}


async def execute(ctx: StepContext, config: Mapping[str, Any]) -> Any:
    """Pass when the metric clears the threshold; otherwise fail the step (a gate)."""
    metrics = config["metrics"]
    name = config["metric"]
    if not isinstance(metrics, Mapping) or name not in metrics:
        known = sorted(metrics) if isinstance(metrics, Mapping) else []
        raise StepFailed(f"metric {name!r} is not among the metrics {known}", retryable=False)
    value = metrics[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StepFailed(f"metric {name!r} is {value!r}, not a number", retryable=False)
    check, symbol = _COMPARE[config.get("comparison", "gte")]
    result = {
        "passed": bool(check(value, config["threshold"])),
        "metric": name,
        "value": value,
        "threshold": config["threshold"],
    }
    if not result["passed"]:
        raise StepFailed(
            f"gate not met: {name} = {value} is not {symbol} {config['threshold']}",
            retryable=False,
            details=result,
        )
    return result
