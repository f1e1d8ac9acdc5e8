"""``train``: train a model version."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.steps.base import StepType, config_object, id_string, output_object
from actors.steps.context import StepContext, Wait

_ONE_WEEK_S = 7 * 24 * 3600

STEP = StepType(
    type="train",
    name="Train model",
    description=(
        "Train a new version of a model on a dataset version and record its metrics. "
        "Machine and accelerator settings apply to managed (cloud) training."
    ),
    category="ml",
    config_schema=config_object(
        {
            "model_id": id_string("Model to add the trained version to."),
            "dataset_id": id_string("Training dataset."),
            "dataset_version": {
                "type": "integer",
                "minimum": 1,
                "description": "Dataset version; absent means the latest.",
            },
            "experiment_id": id_string("Experiment to log the run under."),
            "target_column": {
                "type": "string",
                "minLength": 1,
                "maxLength": 300,
                "description": "Column to predict.",
            },
            "task": {
                "type": "string",
                "enum": ["classification", "regression"],
                "description": "Kind of prediction problem.",
            },
            "algorithm": {
                "type": "string",
                "minLength": 1,
                "maxLength": 100,
                "description": "Algorithm name; absent lets the trainer choose.",
            },
            "hyperparameters": {
                "type": "object",
                "maxProperties": 200,
                "description": "Algorithm hyperparameters (name to value).",
            },
            "machine_type": {
                "type": "string",
                "maxLength": 100,
                "description": "Machine type, e.g. n1-standard-8.",
            },
            "accelerator_type": {
                "type": "string",
                "maxLength": 100,
                "description": "Accelerator type, e.g. NVIDIA_TESLA_T4.",
            },
            "accelerator_count": {
                "type": "integer",
                "minimum": 0,
                "maximum": 16,
                "description": "Number of accelerators.",
            },
            "max_runtime_seconds": {
                "type": "integer",
                "minimum": 1,
                "maximum": _ONE_WEEK_S,
                "description": "Stop the training job after this long.",
            },
        },
        required=["model_id", "dataset_id", "target_column"],
    ),
    output_schema=output_object(
        {
            "training_job_id": {"type": "string", "description": "The training job."},
            "model_version_id": {"type": "string", "description": "The new model version."},
            "metrics": {
                "type": "object",
                "additionalProperties": {"type": ["number", "null"]},
                "description": "Evaluation metrics by name, e.g. accuracy.",
            },
        }
    ),
    example={
        "model_id": "churn",
        "dataset_id": "{{ steps.profile.output.dataset_id }}",
        "dataset_version": "{{ steps.profile.output.version }}",
        "target_column": "churned",
        "task": "classification",
        "algorithm": "gradient_boosting",
        "hyperparameters": {"learning_rate": 0.1, "max_depth": 6},
        "max_runtime_seconds": 3600,
    },
)


_JOB_CONFIG = (
    "target_column",
    "task",
    "algorithm",
    "hyperparameters",
    "machine_type",
    "accelerator_type",
    "accelerator_count",
    "max_runtime_seconds",
)


async def execute(ctx: StepContext, config: Mapping[str, Any]) -> Any:
    """Start the training job and wait for it without holding a worker: the job reports back
    to the run when it ends (and cancelling the run cancels the job)."""
    request = {
        "model_id": config["model_id"],
        "dataset_id": config["dataset_id"],
        "dataset_version": config.get("dataset_version"),
        "experiment_id": config.get("experiment_id"),
        "config": {k: config[k] for k in _JOB_CONFIG if config.get(k) is not None},
    }
    job_id = await ctx.platform.start_training(request)
    return Wait(data={"training_job_id": str(job_id)})
