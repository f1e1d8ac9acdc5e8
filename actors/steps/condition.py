"""``condition``: branch on a JMESPath expression."""

from __future__ import annotations

from actors.steps.base import StepType, config_object, output_object

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
