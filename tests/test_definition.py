"""Workflow definition validation and template rendering."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import pytest

from actors.definition import (
    MAX_DEFINITION_BYTES,
    MAX_EDGES,
    MAX_NODES,
    DefinitionError,
    check_shape,
    validate_definition,
)
from actors.templates import TemplateError, find_templates, is_whole_template, render

DELETE = object()


def n(node_id: str, step_type: str, **data: Any) -> dict[str, Any]:
    return {"id": node_id, "type": step_type, "data": data, "position": {"x": 0, "y": 0}}


def e(source: str, target: str, **extra: Any) -> dict[str, Any]:
    return {"source": source, "target": target} | extra


# Profile, train, evaluate, then branch: deploy when good enough, notify otherwise.
DEFINITION = {
    "nodes": [
        n("profile", "dataset_profile", dataset_id="{{ input.ds }}"),
        n("train", "train", model_id="m", dataset_id="d", target_column="y", task="regression")
        | {"retry": {"max_attempts": 3, "backoff": 2.0}, "timeout_s": 60, "label": "Train"},
        n("evaluate", "evaluate", metric="r2", threshold=0.8, metrics="{{ steps.train.output.m }}"),
        n("gate", "condition", expression="steps.evaluate.output.passed"),
        n("deploy", "deploy", model_id="m", version="{{ steps.train.output.version }}"),
        n("notify", "http", method="POST", url="https://x.test/a", body={"t": "{{ input.a }}!"}),
    ],
    "edges": [
        e("profile", "train", id="e0"),
        e("train", "evaluate", id="e1", style={"stroke": "red"}, selected=False),
        e("evaluate", "gate"),
        e("gate", "deploy", id="e3", condition="true"),
        e("gate", "notify", id="e4", condition="false"),
    ],
    "viewport": {"x": 0, "y": 0, "zoom": 1},
}


def patched(changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of DEFINITION with each JSON pointer set to its value (DELETE removes it)."""
    definition = copy.deepcopy(DEFINITION)
    for pointer, value in changes.items():
        *parents, last = pointer.split("/")[1:]
        target: Any = definition
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        key = int(last) if isinstance(target, list) and last != "-" else last
        if last == "-":
            target.append(value)
        elif value is DELETE:
            del target[key]
        else:
            target[key] = value
    return definition


def codes(errors: list[DefinitionError]) -> str:
    return ", ".join(f"{error.code} {error.path}" for error in errors)


def test_valid_multi_branch_definition_has_no_errors() -> None:
    assert validate_definition(DEFINITION) == []
    assert check_shape(DEFINITION) == []


def test_error_as_dict() -> None:
    as_dict = DefinitionError("/a", "some_code", "Some text.").as_dict()
    assert as_dict == {"path": "/a", "code": "some_code", "message": "Some text."}


@pytest.mark.parametrize("definition", [{}, {"nodes": [], "edges": []}, {"edges": []}])
def test_empty_definition_is_an_error_but_a_valid_draft(definition: object) -> None:
    assert check_shape(definition) == []
    errors = validate_definition(definition)
    assert codes(errors) == "empty_definition /nodes"
    assert "at least one step" in errors[0].message


BAD_TEMPLATES = {"a": ["ok", "{{ steps.[ }}"], "b/c~": "x {{ input.a }} {{ ) }}"}
GRAPH_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "dup id": ({"/nodes/-": n("train", "delay", seconds=1)}, "duplicate_node_id /nodes/6/id"),
    "unknown target": ({"/edges/0/target": "ghost"}, "unknown_node /edges/0/target"),
    "unknown source": ({"/edges/2/source": "x"}, "unknown_node /edges/2/source"),
    "self loop": ({"/edges/-": e("train", "train")}, "self_loop /edges/5"),
    "unknown type": ({"/nodes/0/type": "magic"}, "unknown_step_type /nodes/0/type"),
    "bad config": ({"/nodes/5/data/url": "ftp://no"}, "invalid_config /nodes/5/data/url"),
    "missing field": ({"/nodes/4/data/model_id": DELETE}, "invalid_config /nodes/4/data"),
    "missing data": ({"/nodes/3/data": DELETE}, "invalid_config /nodes/3/data"),
    "bad templates": (
        {"/nodes/5/data/body": BAD_TEMPLATES},
        "invalid_template /nodes/5/data/body/a/1, invalid_template /nodes/5/data/body/b~1c~0",
    ),
    "empty template": ({"/nodes/5/data/body": "{{ }}"}, "invalid_template /nodes/5/data/body"),
    "old literal": ({"/nodes/5/data/url": "{{ `x` }}"}, "invalid_template /nodes/5/data/url"),
    "bad expression": (
        {"/nodes/3/data/expression": "steps.a =="},
        "invalid_expression /nodes/3/data/expression",
    ),
    "cond": ({"/edges/0/condition": "true"}, "unexpected_edge_condition /edges/0/condition"),
    "missing condition": ({"/edges/4/condition": DELETE}, "missing_edge_condition /edges/4"),
    "cycle": ({"/edges/-": e("evaluate", "profile")}, "cycle /edges/5"),
}


@pytest.mark.parametrize(("changes", "expected"), GRAPH_CASES.values(), ids=GRAPH_CASES)
def test_graph_errors(changes: dict[str, Any], expected: str) -> None:
    definition = patched(changes)
    assert check_shape(definition) == []
    assert codes(validate_definition(definition)) == expected


def test_messages_name_the_ids_involved() -> None:
    for changes, _ in GRAPH_CASES.values():
        definition = patched(changes)
        ids = [x["id"] for x in definition["nodes"] + definition["edges"] if "id" in x]
        for error in validate_definition(definition):
            assert "#" in error.message or any(f"'{i}'" in error.message for i in ids)
    (error,) = validate_definition(patched({"/edges/-": e("evaluate", "train")}))
    assert error.message == "Steps form a cycle: 'train' → 'evaluate' → 'train'."
    (error,) = check_shape(patched({"/nodes/1/timeout_s": -5}))
    assert error.message == "Node 'train', timeout_s: -5 is less than or equal to the minimum of 0"
    (error,) = validate_definition(patched(GRAPH_CASES["unknown type"][0]))
    assert "'magic'; known types are http, agent, approval, delay," in error.message


def test_separate_and_dense_cycles_are_all_reported() -> None:
    nodes = [n(f"n{i}", "delay", seconds=1) for i in range(45)]
    edges = [e("n0", "n1"), e("n1", "n0"), e("n2", "n3"), e("n3", "n2")]
    errors = validate_definition({"nodes": nodes, "edges": edges})
    assert codes(errors) == "cycle /edges/1, cycle /edges/3"
    edges = [e(a["id"], b["id"]) for a in nodes for b in nodes if a != b][:MAX_EDGES]
    assert {x.code for x in validate_definition({"nodes": nodes, "edges": edges})} == {"cycle"}


def test_every_error_is_reported_at_once() -> None:
    definition = patched(
        {key: value for case in GRAPH_CASES.values() for key, value in case[0].items()}
        | {"/nodes/3/data": {"expression": "a =="}, "/nodes/3/retry": {"max_attempts": 0, "x": 1}}
    )
    definition["edges"] += [e("train", "train"), e("evaluate", "train")]
    found = {error.code for error in validate_definition(definition)}
    expected = {code for _, text in GRAPH_CASES.values() for code in text.split()[::2]}
    assert found == expected | {"out_of_range", "unknown_field"}


SHAPE_CASES: list[tuple[dict[str, Any], str]] = [
    ({"/nodes": {}}, "invalid_type /nodes"),
    ({"/edges": "x"}, "invalid_type /edges"),
    ({"/nodes/0/id": 7}, "invalid_type /nodes/0/id"),
    ({"/nodes/0/id": ""}, "invalid_length /nodes/0/id"),
    ({"/nodes/0/id": "x" * 101}, "invalid_length /nodes/0/id"),
    ({"/nodes/0/type": DELETE}, "missing_field /nodes/0"),
    ({"/nodes/0/data": []}, "invalid_type /nodes/0/data"),
    ({"/nodes/0/timeout_s": 0}, "out_of_range /nodes/0/timeout_s"),
    ({"/nodes/0/retry": {"backoff": 0.5}}, "out_of_range /nodes/0/retry/backoff"),
    ({"/nodes/0/retry": {"max_interval_s": 0}}, "out_of_range /nodes/0/retry/max_interval_s"),
    ({"/nodes/0/retry": {"x": 1}}, "unknown_field /nodes/0/retry"),
    ({"/edges/0/source": DELETE}, "missing_field /edges/0"),
    ({"/edges/3/condition": "yes"}, "invalid_value /edges/3/condition"),
    ({"/nodes/-": 3}, "invalid_type /nodes/6"),
]


@pytest.mark.parametrize(("changes", "expected"), SHAPE_CASES)
def test_shape_errors(changes: dict[str, Any], expected: str) -> None:
    definition = patched(changes)
    assert codes(check_shape(definition)) == expected
    assert codes(validate_definition(definition)).startswith(expected)


def test_too_many_nodes_and_edges() -> None:
    nodes = [n(f"n{i}", "delay", seconds=1) for i in range(MAX_NODES + 1)]
    edges = [e("n0", "n1")] * (MAX_EDGES + 1)
    errors = validate_definition({"nodes": nodes, "edges": edges})
    assert codes(errors) == "too_many_nodes /nodes, too_many_edges /edges"


def test_size_bound() -> None:
    definition = patched({"/nodes/4/data/model_id": ""})
    room = MAX_DEFINITION_BYTES - len(json.dumps(definition))
    definition["nodes"][4]["data"]["model_id"] = "m" * room
    assert codes(validate_definition(definition)) == "invalid_config /nodes/4/data/model_id"
    definition["nodes"][4]["data"]["model_id"] += "m"
    for check in (check_shape, validate_definition):
        errors = check(definition)
        assert codes(errors) == "definition_too_large "
        assert str(MAX_DEFINITION_BYTES) in errors[0].message


def nested(depth: int) -> Any:
    value: Any = "{{ input }}"
    return functools.reduce(lambda inner, _: [inner], range(depth), value)


ODD_INPUTS: list[Any] = [
    *(None, True, 0, -1.5, float("nan"), "nodes", "", [], [n("a", "http")], {1: 2}),
    *({"nodes": None}, {"nodes": [None, 1, "a", [], {}]}, {"nodes": [set()]}, nested(5000)),
    {"nodes": [{"id": 1, "type": 2, "data": 3, "retry": [], "timeout_s": "x"}, {"id": None}]},
    {"nodes": [{"id": "a", "type": "condition"}], "edges": [None, {"source": "a", "target": []}]},
    {"nodes": [n("a", "condition", expression=5), n("b", "condition", expression="")]},
    {"nodes": [n("a", "http", url={"{{": "}}"}), n("b", "http", url="{{ a }} {{ b }}")]},
    {"nodes": [n("a", "transform", output=nested(200))], "edges": [{"source": "a"}, {}]},
    {"nodes": [n("a", "delay")], "edges": [e("a", "b"), e("a", "a", id=1)] * 3},
    {"nodes": [n("x" * 10_000, "y" * 10_000, **{"z" * 9000: "{{ [ }}"})]},
    {"nodes": [n("a", "delay", seconds={"n": [1, {"a": None}]}, __proto__="{{ `x` }}")]},
    {"nodes": [{"id": str(i), "type": "delay"} for i in range(20_000)]},
]


@pytest.mark.parametrize("definition", ODD_INPUTS, ids=range(len(ODD_INPUTS)))
def test_odd_inputs_never_raise(definition: Any) -> None:
    for check in (check_shape, validate_definition):
        errors = check(definition)
        assert all(isinstance(x, DefinitionError) for x in errors)
        assert all(x.code and x.message and len(x.message) <= 300 for x in errors)


@pytest.mark.parametrize("definition", [None, [], "x", 3, {"nodes": "all", "edges": []}])
def test_unreadable_definitions_give_shape_errors_only(definition: object) -> None:
    assert codes(validate_definition(definition)) in ("invalid_type ", "invalid_type /nodes")


CONTEXT = {
    "input": {"rows": 3, "name": "churn", "flag": True, "tags": ["a", "b"], "none": None},
    "steps": {
        "train": {"output": {"metrics": {"acc": 0.91}, "id": "mv1"}, "status": "succeeded"},
        "my-step": {"output": {"ok": 1}, "status": "succeeded"},
    },
}


def test_is_whole_template() -> None:
    for text in ("{{ input.rows }}", "{{input.rows}}", "{{ {a: input.rows} }}"):
        assert is_whole_template(text)
    for text in ("x {{ a }}", "{{ a }}!", " {{ a }}", "a", "{{ a }} {{ b }}", "{{ a }}{{ b }}"):
        assert not is_whole_template(text)


def test_find_templates_yields_pointers_and_expressions() -> None:
    value = {"a": "{{ input.x }}", "b": ["t", {"c/d": "{{ input.y }} {{input.z}}"}], "{{ k }}": 1}
    expected = [("/a", "input.x"), ("/b/1/c~1d", "input.y"), ("/b/1/c~1d", "input.z")]
    assert find_templates(value) == expected
    assert find_templates("{{ input }}") == [("", "input")]
    assert find_templates(None) == []


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ input.rows }}", 3),
        ("{{ steps.train.output.metrics }}", {"acc": 0.91}),
        ('{{ steps."my-step".output.ok }}', 1),
        ("{{ steps.train.status == 'succeeded' }}", True),
        ("{{ input.missing.deeper }}", None),
        ("rows: {{ input.rows }}", "rows: 3"),
        ("{{ input.name }}-{{ input.rows }}", "churn-3"),
        ("m={{ steps.train.output.metrics }}", 'm={"acc": 0.91}'),
        ("t={{ input.tags }}", 't=["a", "b"]'),
        ("f={{ input.flag }}", "f=true"),
        ("[{{ input.none }}][{{ input.missing }}]", "[][]"),
    ],
)
def test_render_strings(template: str, expected: Any) -> None:
    assert render(template, CONTEXT) == expected


def test_render_nested_values_without_mutating_them() -> None:
    value = {
        "m": "{{ steps.train.output.id }}",
        "l": [{"n": "{{ input.rows }}"}, "x{{ input.rows }}"],
    }
    before = copy.deepcopy(value)
    assert render(value, CONTEXT) == {"m": "mv1", "l": [{"n": 3}, "x3"]}
    assert render([5, None, False, 1.5, "{x}"], CONTEXT) == [5, None, False, 1.5, "{x}"]
    assert value == before


def test_render_bad_expression_raises_template_error() -> None:
    with pytest.raises(TemplateError) as info:
        render({"a": "x {{ input.[ }}"}, CONTEXT)
    assert info.value.expression == "input.["
    for bad in ("{{ length(input.rows) }}", "{{ `raw` }}"):
        with pytest.raises(TemplateError):
            render(bad, CONTEXT)
