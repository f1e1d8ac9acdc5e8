"""``delay``: wait for a duration or until a moment."""

from __future__ import annotations

from actors.steps.base import StepType, config_object, output_object

_ONE_YEAR_S = 365 * 24 * 3600

STEP = StepType(
    type="delay",
    name="Delay",
    description=(
        "Wait for a number of seconds, or until a date-time, before continuing. Give "
        "exactly one of seconds or until; an instant in the past does not wait."
    ),
    category="control",
    config_schema=config_object(
        {
            "seconds": {
                "type": "number",
                "minimum": 0,
                "maximum": _ONE_YEAR_S,
                "description": "How long to wait, in seconds (at most one year).",
            },
            "until": {
                "type": "string",
                "format": "date-time",
                "description": "RFC 3339 date-time with offset to wait for.",
            },
        },
        # Only presence is decided here so that a templated value is still tolerated.
        oneOf=[{"required": ["seconds"]}, {"required": ["until"]}],
    ),
    output_schema=output_object(
        {
            "waited_s": {"type": "number", "minimum": 0, "description": "Seconds waited."},
            "woke_at": {
                "type": "string",
                "format": "date-time",
                "description": "When the wait ended.",
            },
        }
    ),
    example={"seconds": 300},
)
