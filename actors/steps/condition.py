"""``condition``: branch on a JMESPath expression."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jmespath.exceptions import JMESPathError

from actors.steps.base import StepType, config_object, output_object
from actors.steps.context import StepContext, StepFailed
from actors.templates import compile_expression

STEP = StepType(
    type="condition",
    name="Condition",
    description=(
        "Evaluate a JMESPath expression against the run context {input, steps} and "
        "follow the outgoing edges marked 'true' or 'false'. The result follows JMESPath "
        "truthiness: false, null and empty strings, arrays and objects are false."
    ),
    category="control",
    config_schema=config_object(
        {
            "expression": {
                "type": "string",
                "minLength": 1,
                "maxLength": 2000,
                "description": (
                    "A bare JMESPath expression (no {{ }}), e.g. steps.evaluate.output.passed."
                ),
            },
        },
        required=["expression"],
    ),
    output_schema=output_object(
        {
            "result": {"type": "boolean", "description": "Which branch was taken."},
            "value": {"description": "The raw value of the expression."},
        }
    ),
    example={"expression": "steps.evaluate.output.passed"},
)


def _truthy(value: Any) -> bool:
    # JMESPath's notion of truth: false, null and empty strings/lists/objects are false.
    return value not in (False, None, "", [], {})


async def execute(ctx: StepContext, config: Mapping[str, Any]) -> Any:
    """Evaluate the expression over {input, steps}; edges follow `result`."""
    try:
        value = compile_expression(config["expression"]).search(dict(ctx.scope))
    except JMESPathError as exc:
        raise StepFailed(f"condition expression failed: {exc}", retryable=False) from exc
    return {"result": _truthy(value), "value": value}
