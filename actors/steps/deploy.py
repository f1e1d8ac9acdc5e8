"""``deploy``: deploy a model version to an endpoint."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.steps.base import StepType, config_object, id_string, output_object
from actors.steps.context import StepContext

STEP = StepType(
    type="deploy",
    name="Deploy model",
    description=(
        "Deploy a model version, chosen by version number or by alias, to a serving "
        "endpoint: 'local' serves it in-process, 'vertex' on a Vertex AI endpoint. "
        "Give exactly one of version or alias; machine and replica settings apply to "
        "'vertex' and max_replicas must not be below min_replicas."
    ),
    category="ml",
    config_schema=config_object(
        {
            "model_id": id_string("Model to deploy."),
            "version": {
                "type": "integer",
                "minimum": 1,
                "description": "Model version number to deploy.",
            },
            "alias": {
                "type": "string",
                "minLength": 1,
                "maxLength": 100,
                "description": "Model alias to deploy, e.g. champion.",
            },
            "target": {
                "type": "string",
                "enum": ["local", "vertex"],
                "default": "local",
                "description": "Where to serve the model.",
            },
            "machine_type": {
                "type": "string",
                "maxLength": 100,
                "description": "Serving machine type, e.g. n1-standard-4.",
            },
            "min_replicas": {
                "type": "integer",
                "minimum": 1,
                "maximum": 100,
                "default": 1,
                "description": "Fewest serving replicas.",
            },
            "max_replicas": {
                "type": "integer",
                "minimum": 1,
                "maximum": 100,
                "description": "Most serving replicas; defaults to min_replicas.",
            },
        },
        required=["model_id"],
        # Only presence is decided here so that a templated value is still tolerated.
        oneOf=[{"required": ["version"]}, {"required": ["alias"]}],
    ),
    output_schema=output_object(
        {
            "deployment_id": {"type": "string", "description": "The deployment."},
            "model_version_id": {"type": "string", "description": "The deployed version."},
            "endpoint": {"type": "string", "description": "URL or name of the endpoint."},
        }
    ),
    example={
        "model_id": "churn",
        "alias": "champion",
        "target": "vertex",
        "machine_type": "n1-standard-4",
        "min_replicas": 1,
        "max_replicas": 3,
    },
)


async def execute(ctx: StepContext, config: Mapping[str, Any]) -> Any:
    """Runs through the platform on behalf of the run's owner."""
    return await ctx.platform.call(STEP.type, config)
