"""Validation of workflow definitions: React-Flow shaped graphs of steps.

``check_shape`` only checks the envelope, so a draft in progress can be saved;
``validate_definition`` checks everything a run needs and reports every problem found.
"""

from __future__ import annotations

import graphlib
import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jmespath.exceptions import JMESPathError
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from actors.steps import STEP_TYPES, config_errors
from actors.templates import compile_expression, find_templates, json_pointer

MAX_DEFINITION_BYTES = 512_000
MAX_NODES = 500
MAX_EDGES = 2000
# Messages quote the offending value; keep a pasted blob from flooding the response.
_MAX_MESSAGE_CHARS = 300
_MAX_QUOTE_CHARS = 60

_RETRY_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
        "backoff": {"type": "number", "minimum": 1},
        "initial_interval_s": {"type": "number", "exclusiveMinimum": 0},
        "max_interval_s": {"type": "number", "exclusiveMinimum": 0},
    },
}
# Nodes and edges stay open objects: the editor stores its own keys (label, style, ...).
_NODE_SCHEMA = {
    "type": "object",
    "required": ["id", "type"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 100},
        "type": {"type": "string", "minLength": 1, "maxLength": 100},
        "data": {"type": "object"},
        "position": {"type": "object"},
        "retry": _RETRY_SCHEMA,
        "timeout_s": {"type": "number", "exclusiveMinimum": 0},
    },
}
_EDGE_SCHEMA = {
    "type": "object",
    "required": ["source", "target"],
    "properties": {
        "id": {"type": "string"},
        "source": {"type": "string"},
        "target": {"type": "string"},
        "condition": {"enum": ["true", "false"]},
    },
}
ENVELOPE_SCHEMA: Mapping[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "nodes": {"type": "array", "maxItems": MAX_NODES, "items": _NODE_SCHEMA},
        "edges": {"type": "array", "maxItems": MAX_EDGES, "items": _EDGE_SCHEMA},
    },
}
_ENVELOPE = Draft202012Validator(ENVELOPE_SCHEMA)
_SHAPE_CODES = {
    "type": "invalid_type",
    "required": "missing_field",
    "additionalProperties": "unknown_field",
    "enum": "invalid_value",
    "minLength": "invalid_length",
    "maxLength": "invalid_length",
    "minimum": "out_of_range",
    "maximum": "out_of_range",
    "exclusiveMinimum": "out_of_range",
}
# After these, the graph is either unreadable or too big to be worth walking.
_FATAL_CODES = frozenset({"not_json", "definition_too_large", "too_many_nodes", "too_many_edges"})


@dataclass(frozen=True, slots=True)
class DefinitionError:
    """One problem in a definition, located by a JSON pointer into it."""

    path: str
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """The error as a JSON-ready object."""
        return {"path": self.path, "code": self.code, "message": self.message}


def check_shape(definition: object) -> list[DefinitionError]:
    """Envelope errors only: types, required keys and bounds of nodes and edges."""
    try:
        size = len(json.dumps(definition))
    except (TypeError, ValueError, RecursionError):
        return [DefinitionError("", "not_json", "The definition is not a JSON value.")]
    if size > MAX_DEFINITION_BYTES:
        message = f"The definition is {size} bytes; the limit is {MAX_DEFINITION_BYTES}."
        return [DefinitionError("", "definition_too_large", message)]
    return [_shape_error(definition, e) for e in _ENVELOPE.iter_errors(definition)]


def validate_definition(definition: object) -> list[DefinitionError]:
    """Every error in a definition that is to be published or run."""
    errors = check_shape(definition)
    if not isinstance(definition, Mapping) or any(e.code in _FATAL_CODES for e in errors):
        return errors
    nodes, edges = definition.get("nodes", []), definition.get("edges", [])
    if not isinstance(nodes, list) or not isinstance(edges, list):
        return errors
    if not nodes:
        message = "A workflow needs at least one step."
        errors.append(DefinitionError("/nodes", "empty_definition", message))
    types = _node_types(nodes)
    errors.extend(_node_errors(nodes))
    errors.extend(_edge_errors(edges, types))
    errors.extend(_cycle_errors(edges, types))
    return errors


def _error(path: str, code: str, message: str) -> DefinitionError:
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[: _MAX_MESSAGE_CHARS - 1] + "…"
    return DefinitionError(path, code, message)


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_QUOTE_CHARS else text[: _MAX_QUOTE_CHARS - 1] + "…"


def _label(kind: str, item: object, index: int) -> str:
    item_id = item.get("id") if isinstance(item, Mapping) else None
    if isinstance(item_id, str) and item_id:
        return f"{kind} {_quote(item_id)}"
    return f"{kind} #{index}"


def _shape_error(definition: object, error: ValidationError) -> DefinitionError:
    parts = list(error.absolute_path)
    path = json_pointer(parts)
    if error.validator == "maxItems" and len(parts) == 1:
        what = str(parts[0])
        message = f"A workflow can have at most {error.validator_value} {what}."
        return _error(path, f"too_many_{what}", message)
    where = "The definition"
    if len(parts) >= 2 and isinstance(parts[1], int) and isinstance(definition, Mapping):
        collection = definition.get(parts[0])
        item = collection[parts[1]] if isinstance(collection, list) else None
        where = _label("Node" if parts[0] == "nodes" else "Edge", item, parts[1])
        if field := ".".join(str(p) for p in parts[2:]):
            where += f", {field}"
    code = _SHAPE_CODES.get(str(error.validator), "invalid_shape")
    return _error(path, code, f"{where}: {error.message}")


def _node_types(nodes: list[Any]) -> dict[str, str]:
    """Step type by node id; the first of duplicated ids wins, a non-string type is ''."""
    types: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, Mapping) and isinstance(node.get("id"), str):
            step_type = node.get("type")
            types.setdefault(node["id"], step_type if isinstance(step_type, str) else "")
    return types


def _node_errors(nodes: list[Any]) -> Iterator[DefinitionError]:
    first_index: dict[str, int] = {}
    for i, node in enumerate(nodes):
        if not isinstance(node, Mapping):
            continue
        node_id = node.get("id")
        if isinstance(node_id, str) and node_id in first_index:
            message = (
                f"Node id {_quote(node_id)} is used by both node "
                f"#{first_index[node_id]} and node #{i}."
            )
            yield _error(f"/nodes/{i}/id", "duplicate_node_id", message)
        elif isinstance(node_id, str):
            first_index[node_id] = i
        yield from _step_errors(i, node)


def _step_errors(i: int, node: Mapping[str, Any]) -> Iterator[DefinitionError]:
    label, step_type, data = _label("Node", node, i), node.get("type"), node.get("data", {})
    if isinstance(step_type, str) and step_type not in STEP_TYPES:
        message = (
            f"{label} has unknown step type {_quote(step_type)}; "
            f"known types are {', '.join(STEP_TYPES)}."
        )
        yield _error(f"/nodes/{i}/type", "unknown_step_type", message)
    if not isinstance(data, Mapping):
        return  # check_shape has reported it.
    base = f"/nodes/{i}/data"
    yield from _template_errors(base, label, data)
    step = STEP_TYPES.get(step_type) if isinstance(step_type, str) else None
    if step is None:
        return
    for pointer, reason in config_errors(step, data):
        message = f"{label} ({step.type}): {reason}"
        yield _error(base + pointer, "invalid_config", message)
    expression = data.get("expression")
    if step.type == "condition" and isinstance(expression, str) and expression:
        parse_error = _parse_error(expression)
        if parse_error is not None:
            message = f"{label}: the expression is not valid JMESPath: {parse_error}"
            yield _error(f"{base}/expression", "invalid_expression", message)


def _template_errors(base: str, label: str, data: Mapping[str, Any]) -> Iterator[DefinitionError]:
    for pointer, expression in find_templates(data):
        reason = _parse_error(expression)
        if reason is not None:
            message = f"{label}: template {{{{ {expression} }}}} is not valid JMESPath: {reason}"
            yield _error(base + pointer, "invalid_template", message)


def _parse_error(expression: str) -> str | None:
    try:
        compile_expression(expression)
    except JMESPathError as exc:
        return str(exc)
    return None


def _edge_errors(edges: list[Any], types: Mapping[str, str]) -> Iterator[DefinitionError]:
    for j, edge in enumerate(edges):
        if not isinstance(edge, Mapping):
            continue
        label, source = _label("Edge", edge, j), edge.get("source")
        yield from _endpoint_errors(j, edge, label, types)
        if isinstance(source, str) and source in types:
            yield from _branch_errors(j, edge, label, types[source])


def _endpoint_errors(
    j: int, edge: Mapping[str, Any], label: str, types: Mapping[str, str]
) -> Iterator[DefinitionError]:
    source, target = edge.get("source"), edge.get("target")
    for end, node_id in (("source", source), ("target", target)):
        if isinstance(node_id, str) and node_id not in types:
            message = f"{label}: {end} {_quote(node_id)} is not a node of this workflow."
            yield _error(f"/edges/{j}/{end}", "unknown_node", message)
    if isinstance(source, str) and source == target:
        message = f"{label} connects node {_quote(source)} to itself."
        yield _error(f"/edges/{j}", "self_loop", message)


def _branch_errors(
    j: int, edge: Mapping[str, Any], label: str, source_type: str
) -> Iterator[DefinitionError]:
    source = _quote(edge["source"])
    if source_type == "condition" and "condition" not in edge:
        message = f"{label} leaves condition node {source} and needs condition 'true' or 'false'."
        yield _error(f"/edges/{j}", "missing_edge_condition", message)
    elif source_type != "condition" and "condition" in edge:
        message = f"{label} has a condition but node {source} is not a condition step."
        yield _error(f"/edges/{j}/condition", "unexpected_edge_condition", message)


def _cycle_errors(edges: list[Any], types: Mapping[str, str]) -> Iterator[DefinitionError]:
    """One error per cycle; each found cycle is cut before looking for the next.

    Cutting every edge of a reported cycle keeps the reports disjoint, so each one asks
    for a separate fix, and bounds the work by the number of edges.
    """
    predecessors: dict[str, dict[str, int]] = {node_id: {} for node_id in types}
    for j, edge in enumerate(edges):
        if not isinstance(edge, Mapping):
            continue
        source, target = edge.get("source"), edge.get("target")
        if not (isinstance(source, str) and isinstance(target, str)) or source == target:
            continue
        if source in types and target in types:
            predecessors[target].setdefault(source, j)
    while True:
        try:
            graphlib.TopologicalSorter(predecessors).prepare()
        except graphlib.CycleError as exc:
            cycle: list[str] = exc.args[1]
        else:
            return
        closing = predecessors[cycle[-1]][cycle[-2]]
        for source, target in itertools.pairwise(cycle):
            del predecessors[target][source]
        message = "Steps form a cycle: " + " → ".join(_quote(n) for n in cycle) + "."
        yield _error(f"/edges/{closing}", "cycle", message)
