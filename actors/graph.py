"""A published definition as an executable graph, and which steps can run next.

Rules: a step with no parents is ready at once. Otherwise it waits until every incoming edge
is decided. An edge is *live* when its source succeeded and, for an edge out of a condition,
the condition's result matches the edge; it is *dead* when its source was skipped or the
condition went the other way. A step with at least one live edge runs (joins wait for all
parents); a step whose edges are all dead is skipped, and the skip flows downstream.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from actors.templates import find_templates


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED}
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per-step retry: `max_attempts` in all, waits growing by `backoff` up to a ceiling."""

    max_attempts: int = 1
    backoff: float = 2.0
    initial_interval_s: float = 1.0
    max_interval_s: float = 60.0

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before `attempt` (2, 3, ...), before jitter."""
        return min(self.max_interval_s, self.initial_interval_s * self.backoff ** (attempt - 2))


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    condition: str | None = None


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    type: str
    config: Mapping[str, Any]
    retry: RetryPolicy = RetryPolicy()
    timeout_s: float | None = None
    templated: bool = False  # its config holds a template (rendering it reads the run)


@dataclass(frozen=True, slots=True)
class Graph:
    """Nodes in definition order with their incoming and outgoing edges."""

    nodes: Mapping[str, Node]
    incoming: Mapping[str, tuple[Edge, ...]] = field(default_factory=dict)
    outgoing: Mapping[str, tuple[Edge, ...]] = field(default_factory=dict)
    # Each node's place in definition order.
    order: Mapping[str, int] = field(default_factory=dict)

    def successors(self, node_ids: Collection[str]) -> set[str]:
        """The targets of the edges out of `node_ids`."""
        return {e.target for n in node_ids for e in self.outgoing.get(n, ())}

    @property
    def sinks(self) -> list[str]:
        return [n for n in self.nodes if not self.outgoing.get(n)]


def build_graph(definition: Mapping[str, Any]) -> Graph:
    """The graph of a definition that passed ``validate_definition``."""
    nodes: dict[str, Node] = {}
    for raw in definition.get("nodes", []):
        retry = RetryPolicy(**raw["retry"]) if raw.get("retry") else RetryPolicy()
        config = raw.get("data") or {}
        templated = bool(find_templates(config))
        nodes[raw["id"]] = Node(
            raw["id"], raw["type"], config, retry, raw.get("timeout_s"), templated
        )
    incoming: dict[str, list[Edge]] = {n: [] for n in nodes}
    outgoing: dict[str, list[Edge]] = {n: [] for n in nodes}
    for raw in definition.get("edges", []):
        edge = Edge(raw["source"], raw["target"], raw.get("condition"))
        incoming[edge.target].append(edge)
        outgoing[edge.source].append(edge)
    return Graph(
        nodes,
        {k: tuple(v) for k, v in incoming.items()},
        {k: tuple(v) for k, v in outgoing.items()},
        {n: i for i, n in enumerate(nodes)},
    )


# Graphs of recently run workflows: a workflow's definition never changes once published (a
# new version is a new workflow), so runs of one workflow share its graph.
_GRAPHS: OrderedDict[Any, Graph] = OrderedDict()
GRAPH_CACHE_SIZE = 1024


def graph_of(workflow_id: Any, definition: Mapping[str, Any]) -> Graph:
    """The graph of a published workflow's definition, built once per process."""
    graph = _GRAPHS.get(workflow_id)
    if graph is None:
        graph = _GRAPHS[workflow_id] = build_graph(definition)
        if len(_GRAPHS) > GRAPH_CACHE_SIZE:
            _GRAPHS.popitem(last=False)
    else:
        _GRAPHS.move_to_end(workflow_id)
    return graph


def _edge_state(edge: Edge, statuses: Mapping[str, StepStatus], outputs: Mapping[str, Any]) -> str:
    status = statuses.get(edge.source, StepStatus.PENDING)
    if status == StepStatus.SKIPPED:
        return "dead"
    if status != StepStatus.SUCCEEDED:
        return "open"
    if edge.condition is None:
        return "live"
    output = outputs.get(edge.source)
    result = bool(output.get("result")) if isinstance(output, dict) else False
    return "live" if str(result).lower() == edge.condition else "dead"


def next_steps(
    graph: Graph,
    statuses: Mapping[str, StepStatus],
    outputs: Mapping[str, Any],
    among: Collection[str] | None = None,
) -> tuple[list[str], list[str]]:
    """(steps to start now, steps to mark skipped), in definition order.

    Skips are applied as they are found, so one call returns a whole skipped branch. `among`
    limits the look to those steps (and what their skips reach): the successors of the steps
    that changed since a call that left nothing ready, as nothing else can have become so.
    """
    # Called once per planned round: no copy of the statuses unless a skip needs one, and no
    # list of edge states per step.
    current: Mapping[str, StepStatus] = statuses
    copied: dict[str, StepStatus] | None = None
    looked: set[str] | None = None if among is None else set(among)
    start: list[str] = []
    skip: list[str] = []
    changed = True
    while changed:
        changed = False
        for node_id in (
            graph.nodes if looked is None else sorted(looked, key=graph.order.__getitem__)
        ):
            if current.get(node_id, StepStatus.PENDING) != StepStatus.PENDING or node_id in start:
                continue
            edges = graph.incoming.get(node_id, ())
            decided, live = True, not edges
            for edge in edges:
                state = _edge_state(edge, current, outputs)
                if state == "open":
                    decided = False
                    break
                live = live or state == "live"
            if not decided:
                continue
            if live:
                start.append(node_id)
            else:
                skip.append(node_id)
                copied = dict(current) if copied is None else copied
                copied[node_id] = StepStatus.SKIPPED
                current = copied
                changed = True
                if looked is not None:
                    looked |= graph.successors((node_id,))
    return start, skip
