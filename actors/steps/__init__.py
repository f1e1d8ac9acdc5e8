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

__all__ = ["STEP_TYPES", "StepType", "catalog", "config_errors"]

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
