"""The step catalog: schemas, examples and template-tolerant config validation."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from actors.steps import STEP_TYPES, StepType, catalog, config_errors

EXPECTED_TYPES = [
    "http",
    "agent",
    "approval",
    "delay",
    "condition",
    "transform",
    "subworkflow",
    "dataset_profile",
    "train",
    "evaluate",
    "deploy",
    "predict",
    "batch_predict",
]
STEPS = list(STEP_TYPES.values())
IDS = [step.type for step in STEPS]


def test_catalog_lists_the_thirteen_types_in_order() -> None:
    assert list(STEP_TYPES) == EXPECTED_TYPES
    assert [entry["type"] for entry in catalog()] == EXPECTED_TYPES


def test_catalog_entries_have_every_key() -> None:
    keys = {"type", "name", "description", "category", "config_schema", "output_schema", "example"}
    for entry in catalog():
        assert set(entry) == keys
        assert entry["category"] in {"integration", "control", "data", "ml"}
        assert entry["name"]
        assert entry["description"]


def test_catalog_entries_are_copies() -> None:
    entry = catalog()[0]
    entry["config_schema"]["properties"].clear()
    entry["example"].clear()
    assert STEP_TYPES["http"].config_schema["properties"]
    assert STEP_TYPES["http"].example


@pytest.mark.parametrize("step", STEPS, ids=IDS)
def test_schemas_are_valid_draft_2020_12(step: StepType) -> None:
    Draft202012Validator.check_schema(step.config_schema)
    Draft202012Validator.check_schema(step.output_schema)


@pytest.mark.parametrize("step", STEPS, ids=IDS)
def test_config_schemas_are_closed_and_documented(step: StepType) -> None:
    schema = step.config_schema
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{step.type}.{name} has no description"
    assert set(schema.get("required", [])) <= set(schema["properties"])


@pytest.mark.parametrize("step", STEPS, ids=IDS)
def test_example_validates(step: StepType) -> None:
    assert config_errors(step, step.example) == []


@pytest.mark.parametrize("step", STEPS, ids=IDS)
def test_unknown_config_key_is_rejected(step: StepType) -> None:
    config = {**step.example, "no_such_option": 1}
    assert [path for path, _ in config_errors(step, config)] == [""]


def test_whole_template_is_accepted_where_a_number_is_required() -> None:
    delay = STEP_TYPES["delay"]
    assert config_errors(delay, {"seconds": "{{ input.wait_s }}"}) == []
    assert (
        config_errors(
            STEP_TYPES["evaluate"],
            {
                "metric": "accuracy",
                "threshold": "{{input.threshold}}",
                "metrics": "{{ steps.train.output.metrics }}",
            },
        )
        == []
    )


def test_whole_template_is_accepted_for_enums_and_formats() -> None:
    http = STEP_TYPES["http"]
    config = {"url": "{{ input.url }}", "method": "{{ input.method }}"}
    assert config_errors(http, config) == []
    assert config_errors(STEP_TYPES["delay"], {"until": "{{ input.wake_at }}"}) == []


def test_non_template_bad_value_is_rejected() -> None:
    errors = config_errors(STEP_TYPES["delay"], {"seconds": "five"})
    assert [path for path, _ in errors] == ["/seconds"]
    errors = config_errors(STEP_TYPES["delay"], {"seconds": -1})
    assert [path for path, _ in errors] == ["/seconds"]


def test_embedded_template_is_not_a_number() -> None:
    errors = config_errors(STEP_TYPES["delay"], {"seconds": "{{ input.n }} seconds"})
    assert [path for path, _ in errors] == ["/seconds"]


def test_templates_inside_nested_values_are_tolerated() -> None:
    train = STEP_TYPES["train"]
    config = {
        "model_id": "m",
        "dataset_id": "d",
        "target_column": "y",
        "accelerator_count": "{{ input.gpus }}",
        "task": "{{ input.task }}",
    }
    assert config_errors(train, config) == []
    approval = STEP_TYPES["approval"]
    assert config_errors(approval, {"approvers": ["{{ input.owner }}"]}) == []


def test_missing_required_fields_are_reported() -> None:
    errors = config_errors(STEP_TYPES["train"], {"model_id": "m"})
    messages = sorted(message for _, message in errors)
    assert messages == [
        "'dataset_id' is a required property",
        "'target_column' is a required property",
    ]


@pytest.mark.parametrize(
    ("config", "ok"),
    [
        ({"seconds": 10}, True),
        ({"until": "2030-01-01T00:00:00Z"}, True),
        ({"until": "2030-01-01T00:00:00.5+02:00"}, True),
        ({}, False),
        ({"seconds": 10, "until": "2030-01-01T00:00:00Z"}, False),
        ({"until": "2030-01-01"}, False),
        ({"until": "2030-01-01T00:00:00"}, False),
        ({"until": "next tuesday"}, False),
        ({"seconds": 31_536_001}, False),
    ],
)
def test_delay_needs_exactly_one_valid_field(config: dict[str, Any], ok: bool) -> None:
    assert (config_errors(STEP_TYPES["delay"], config) == []) is ok


@pytest.mark.parametrize(
    ("config", "ok"),
    [
        ({"model_id": "m", "version": 2}, True),
        ({"model_id": "m", "alias": "champion"}, True),
        ({"model_id": "m", "version": "{{ steps.train.output.version }}"}, True),
        ({"model_id": "m"}, False),
        ({"model_id": "m", "version": 2, "alias": "champion"}, False),
        ({"model_id": "m", "version": 0}, False),
        ({"model_id": "m", "alias": "x", "target": "aws"}, False),
    ],
)
def test_deploy_needs_version_or_alias(config: dict[str, Any], ok: bool) -> None:
    assert (config_errors(STEP_TYPES["deploy"], config) == []) is ok


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://example.com/x", True),
        ("http://localhost:8080", True),
        ("{{ input.base_url }}/predict", True),
        ("https://{{ input.host }}/x", True),
        ("ftp://example.com/file", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_http_url_must_be_http_or_a_template(url: str, ok: bool) -> None:
    assert (config_errors(STEP_TYPES["http"], {"url": url}) == []) is ok


def test_http_expected_statuses_are_bounded() -> None:
    http = STEP_TYPES["http"]
    errors = config_errors(http, {"url": "https://x.test", "expected_statuses": [200, 700]})
    assert [path for path, _ in errors] == ["/expected_statuses/1"]


def test_http_mentions_idempotency_key() -> None:
    assert "Idempotency-Key: <run_id>:<step_id>" in STEP_TYPES["http"].description


def test_approval_data_schema_must_be_a_json_schema() -> None:
    approval = STEP_TYPES["approval"]
    assert config_errors(approval, {"data_schema": {"type": "object"}}) == []
    assert config_errors(approval, {"data_schema": {"type": "nope"}}) != []
    assert config_errors(approval, {"timeout_s": 0}) != []


@pytest.mark.parametrize(
    ("input_data", "ok"),
    [
        ({"a": 1}, True),
        ([{"a": 1}, {"a": 2}], True),
        ("{{ input.rows }}", True),
        ([], False),
        ([1, 2], False),
        ("rows", False),
    ],
)
def test_predict_input_data_is_a_record_or_records(input_data: object, ok: bool) -> None:
    config = {"model_version_id": "mv", "input_data": input_data}
    assert (config_errors(STEP_TYPES["predict"], config) == []) is ok


def test_batch_predict_paths_are_uris() -> None:
    step = STEP_TYPES["batch_predict"]
    config = {"model_version_id": "mv", "input_path": "in.csv", "output_path": "s3://b/out/"}
    assert [path for path, _ in config_errors(step, config)] == ["/input_path"]


@pytest.mark.parametrize("config", [None, [], "x", 3])
def test_non_object_config_is_rejected(config: object) -> None:
    assert config_errors(STEP_TYPES["condition"], config) != []
