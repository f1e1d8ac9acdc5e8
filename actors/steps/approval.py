"""``approval``: pause the run until a person approves or rejects it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from actors.steps.base import DIALECT, StepType, config_object, output_object
from actors.steps.context import StepContext, Wait

_MAX_WAIT_S = 90 * 24 * 3600

STEP = StepType(
    type="approval",
    name="Human approval",
    description=(
        "Pause the run until one of the approvers approves or rejects it, optionally "
        "submitting data that must match data_schema. A rejection fails the step. When "
        "timeout_s passes without a decision, on_timeout decides: 'fail' fails the step, "
        "'approve' approves it automatically (output.auto is then true)."
    ),
    category="control",
    config_schema=config_object(
        {
            "message": {
                "type": "string",
                "maxLength": 5000,
                "description": "What the approver is asked; may contain templates.",
            },
            "approvers": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 200},
                "maxItems": 100,
                "uniqueItems": True,
                "description": "Users allowed to decide; empty or absent means anyone.",
            },
            "timeout_s": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": _MAX_WAIT_S,
                "description": "Seconds to wait for a decision; absent means no limit.",
            },
            "on_timeout": {
                "type": "string",
                "enum": ["fail", "approve"],
                "default": "fail",
                "description": "What happens when timeout_s passes without a decision.",
            },
            "data_schema": {
                "type": "object",
                "$ref": DIALECT,
                "description": "JSON Schema (2020-12) the approver's submitted data must match.",
            },
        }
    ),
    output_schema=output_object(
        {
            "approved": {"type": "boolean", "description": "Whether the run may go on."},
            "data": {"type": "object", "description": "Data submitted with the decision."},
            "approved_by": {
                "type": ["string", "null"],
                "description": "Who decided; null when decided by on_timeout.",
            },
            "auto": {"type": "boolean", "description": "True when decided by on_timeout."},
        }
    ),
    example={
        "message": "Deploy model {{ steps.train.output.model_version_id }} to production?",
        "approvers": ["alice@example.com", "bob@example.com"],
        "timeout_s": 86400,
        "on_timeout": "fail",
        "data_schema": {
            "type": "object",
            "properties": {"comment": {"type": "string"}},
            "additionalProperties": False,
        },
    },
)


async def execute(ctx: StepContext, config: Mapping[str, Any]) -> Any:
    """Pause until resumed; with timeout_s, also wake when the time is up."""
    timeout_s = config.get("timeout_s")
    wake_at = datetime.now(UTC) + timedelta(seconds=float(timeout_s)) if timeout_s else None
    return Wait(
        wake_at=wake_at,
        data={"message": config.get("message", ""), "approvers": config.get("approvers", [])},
    )


def decided(approved: bool, data: Any, user: str | None, *, auto: bool = False) -> dict[str, Any]:
    """The output of a decision; a rejection is reported by the caller as a failure."""
    return {"approved": approved, "data": data, "approved_by": user, "auto": auto}


def may_decide(config: Mapping[str, Any], user: str, is_admin: bool) -> bool:
    approvers = config.get("approvers") or []
    return is_admin or not approvers or user in approvers
