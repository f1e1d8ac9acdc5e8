"""The step type record and template-tolerant validation of step configs."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from actors.templates import is_whole_template, json_pointer

__all__ = [
    "DIALECT",
    "HTTP_URL_PATTERN",
    "URI_PATTERN",
    "StepType",
    "config_errors",
    "config_object",
    "id_string",
    "output_object",
]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
# Each pattern also admits a leading template ("{{ input.base }}/predict"): the real
# address is only known once the template is rendered at run time.
HTTP_URL_PATTERN = r"^(https?://|\{\{)"
URI_PATTERN = r"^([A-Za-z][A-Za-z0-9+.-]*://|\{\{)"

_FORMATS = FormatChecker()


@_FORMATS.checks("date-time", raises=ValueError)
def _is_datetime(instance: object) -> bool:
    # jsonschema checks date-time only when the optional rfc3339-validator is installed;
    # checking here keeps "until" validated either way. RFC 3339 needs a date, a time
    # and an explicit offset, which fromisoformat alone does not insist on.
    if not isinstance(instance, str):
        return True
    if len(instance) < 20 or instance[10] not in "Tt ":
        return False
    parsed = datetime.datetime.fromisoformat(instance.upper().replace("Z", "+00:00"))
    return parsed.tzinfo is not None


@dataclass(frozen=True, slots=True)
class StepType:
    """A kind of workflow step: its identity, config contract and output contract."""

    type: str
    name: str
    description: str
    category: str
    config_schema: Mapping[str, Any]
    output_schema: Mapping[str, Any]
    example: Mapping[str, Any]

    def catalog_entry(self) -> dict[str, Any]:
        """The step as served by the catalog endpoint (a deep copy, safe to mutate)."""
        return {
            "type": self.type,
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "config_schema": copy.deepcopy(dict(self.config_schema)),
            "output_schema": copy.deepcopy(dict(self.output_schema)),
            "example": copy.deepcopy(dict(self.example)),
        }


def config_object(
    properties: Mapping[str, Any], required: Iterable[str] = (), **extra: Any
) -> dict[str, Any]:
    """A closed (``additionalProperties: false``) object schema for a step config."""
    schema: dict[str, Any] = {
        "$schema": DIALECT,
        "type": "object",
        "additionalProperties": False,
        "properties": dict(properties),
    }
    if required := list(required):
        schema["required"] = required
    return schema | extra


def output_object(properties: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """An object schema for a step output; every listed property is always present."""
    return {
        "$schema": DIALECT,
        "type": "object",
        "properties": dict(properties),
        "required": list(properties),
    } | extra


def id_string(description: str) -> dict[str, Any]:
    """Schema for an identifier of some stored object (model, dataset, agent, ...)."""
    return {"type": "string", "minLength": 1, "maxLength": 200, "description": description}


def config_errors(step: StepType, config: object) -> list[tuple[str, str]]:
    """Errors in ``config`` against the step's config schema, as ``(pointer, message)``.

    An error whose failing value is a whole-template string is dropped: its type is only
    known when the template is rendered at run time.
    """
    validator = Draft202012Validator(step.config_schema, format_checker=_FORMATS)
    errors = [
        (json_pointer(e.absolute_path), e.message)
        for e in validator.iter_errors(config)
        if not _tolerated(e)
    ]
    return sorted(set(errors))


def _tolerated(error: ValidationError) -> bool:
    if isinstance(error.instance, str) and is_whole_template(error.instance):
        return True
    if error.validator in ("anyOf", "oneOf") and error.context:
        # The alternative failed only because of templates in some branch: pass it.
        return any(_all_tolerated(branch) for branch in _branches(error.context))
    return False


def _branches(context: Iterable[ValidationError]) -> list[list[ValidationError]]:
    grouped: dict[object, list[ValidationError]] = {}
    for sub in context:
        key = sub.relative_schema_path[0] if sub.relative_schema_path else None
        grouped.setdefault(key, []).append(sub)
    return list(grouped.values())


def _all_tolerated(errors: list[ValidationError]) -> bool:
    return all(_tolerated(e) for e in errors)
