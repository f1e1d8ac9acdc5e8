"""Which steps run next: a look limited to some steps finds what a look at all of them finds."""

from __future__ import annotations

from actors.graph import StepStatus, build_graph, next_steps

# check -> yes -> after_yes -> join ; check -> no -> after_no -> join ; solo has no parents.
DEFINITION = {
    "nodes": [
        {"id": "check", "type": "condition", "data": {"expression": "input.go"}},
        {"id": "yes", "type": "transform", "data": {"output": {}}},
        {"id": "after_yes", "type": "transform", "data": {"output": {}}},
        {"id": "no", "type": "transform", "data": {"output": {}}},
        {"id": "after_no", "type": "transform", "data": {"output": {}}},
        {"id": "join", "type": "transform", "data": {"output": {}}},
        {"id": "solo", "type": "transform", "data": {"output": {}}},
    ],
    "edges": [
        {"source": "check", "target": "yes", "condition": "true"},
        {"source": "check", "target": "no", "condition": "false"},
        {"source": "yes", "target": "after_yes"},
        {"source": "no", "target": "after_no"},
        {"source": "after_yes", "target": "join"},
        {"source": "after_no", "target": "join"},
    ],
}


def test_a_limited_look_follows_skips_past_the_steps_it_was_given() -> None:
    graph = build_graph(DEFINITION)
    statuses = {n: StepStatus.PENDING for n in graph.nodes}
    statuses["check"] = StepStatus.SUCCEEDED
    statuses["solo"] = StepStatus.SUCCEEDED
    outputs = {"check": {"result": True}}
    full = next_steps(graph, statuses, outputs)
    # Only check's successors were looked at; the skip of `no` still reaches after_no.
    limited = next_steps(graph, statuses, outputs, graph.successors(["check"]))
    assert full == limited == (["yes"], ["no", "after_no"])


def test_a_limited_look_sees_a_join_once_its_last_parent_is_decided() -> None:
    graph = build_graph(DEFINITION)
    statuses = {n: StepStatus.SUCCEEDED for n in graph.nodes}
    statuses["join"] = StepStatus.PENDING
    statuses["after_no"] = StepStatus.PENDING
    statuses["no"] = StepStatus.SKIPPED
    outputs = {"check": {"result": True}}
    # after_no waits on `no`, skipped: it is skipped, and then join (one live parent) runs.
    assert next_steps(graph, statuses, outputs, graph.successors(["no"])) == (
        ["join"],
        ["after_no"],
    )
    # Nothing that changed leads to join: a look limited to other steps leaves it alone.
    assert next_steps(graph, statuses, outputs, graph.successors(["solo"])) == ([], [])
