"""``delay``: wait for a duration or until a moment."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from actors.steps.base import StepType, config_object, output_object
from actors.steps.context import StepContext, Wait

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


async def execute(ctx: StepContext, config: Mapping[str, Any]) -> Any:
    """Wait durably: the wake time is stored, so a restart does not restart the wait."""
    if "seconds" in config:
        return Wait(wake_at=datetime.now(UTC) + timedelta(seconds=float(config["seconds"])))
    until = datetime.fromisoformat(str(config["until"]).upper().replace("Z", "+00:00"))
    return Wait(wake_at=until)


def woke(started_at: datetime | None, now: datetime) -> dict[str, Any]:
    """The output once the wait is over."""
    waited = (now - started_at).total_seconds() if started_at else 0.0
    return {"waited_s": round(waited, 3), "woke_at": now.isoformat()}
