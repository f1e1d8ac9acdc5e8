"""The catalog of workflow step types."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from actors.steps import (
    agent,
    approval,
    batch_predict,
    condition,
    dataset_profile,
    delay,
    deploy,
    evaluate,
    http,
    predict,
    subworkflow,
    train,
    transform,
)
from actors.steps.base import StepType, config_errors
from actors.steps.context import Executor

__all__ = ["EXECUTORS", "PURE_STEPS", "STEP_TYPES", "StepType", "catalog", "config_errors"]

_MODULES = (
    http,
    agent,
    approval,
    delay,
    condition,
    transform,
    subworkflow,
    dataset_profile,
    train,
    evaluate,
    deploy,
    predict,
    batch_predict,
)

# Read-only so no caller can register or replace a step type at run time.
STEP_TYPES: Mapping[str, StepType] = MappingProxyType({m.STEP.type: m.STEP for m in _MODULES})


def catalog() -> list[dict[str, Any]]:
    """Every step type as a catalog entry, in catalog order."""
    return [step.catalog_entry() for step in STEP_TYPES.values()]


# Step types the run actor can execute. The others are declared so definitions can use
# them; running one fails the step with a clear error until its executor exists.
EXECUTORS: Mapping[str, Executor] = MappingProxyType(
    {
        "http": http.execute,
        "approval": approval.execute,
        "delay": delay.execute,
        "condition": condition.execute,
        "transform": transform.execute,
        "subworkflow": subworkflow.execute,
        "train": train.execute,
        "evaluate": evaluate.execute,
        "dataset_profile": dataset_profile.execute,
        "deploy": deploy.execute,
        "predict": predict.execute,
        "batch_predict": batch_predict.execute,
    }
)
# Steps with no side effects: executed inline, their start and result recorded together.
PURE_STEPS = frozenset({"condition", "transform", "evaluate"})
# Pure steps that read the run's context themselves, not only through templates in their config.
READS_CONTEXT = frozenset({"condition"})
