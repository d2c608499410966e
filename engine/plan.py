"""Execution plans: states joined by dependency edges (the seed's ``plan`` module).

``validate_plan`` applies the checks of ENGINE-SPEC §6.1 in order (first failure wins) and
``topological_order`` is the exact deterministic Kahn order a port must reproduce.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from pydantic import ConfigDict, Field

from engine._wire import Frozen
from engine.ids import OpId, StateId
from engine.state import State

__all__ = [
    "DependencyEdge",
    "ExecutionPlan",
    "PlanValidationError",
    "PlanValidationErrorKind",
    "PlanValidator",
    "StateGraph",
    "StateNode",
    "topological_order",
    "validate_plan",
]


class DependencyEdge(Frozen):
    """``from`` must complete before ``to`` (wire fields ``from`` and ``to``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, serialize_by_alias=True)

    from_: StateId = Field(alias="from")
    to: StateId

    @classmethod
    def of(cls, from_: str, to: str) -> DependencyEdge:
        return cls(from_=StateId(from_), to=StateId(to))


@dataclass(frozen=True, slots=True)
class StateNode:
    id: StateId
    state: State


@dataclass(frozen=True, slots=True)
class StateGraph:
    states: tuple[StateNode, ...] = ()
    edges: tuple[DependencyEdge, ...] = ()


@dataclass(frozen=True, slots=True)
class ExecutionPlan:
    op_id: OpId
    graph: StateGraph = field(default_factory=StateGraph)

    def state(self, state_id: StateId) -> State:
        for node in self.graph.states:
            if node.id == state_id:
                return node.state
        raise KeyError(state_id)

    @property
    def state_ids(self) -> list[StateId]:
        return [n.id for n in self.graph.states]


class PlanValidationErrorKind(StrEnum):
    EMPTY_PLAN = "EmptyPlan"
    DUPLICATE_STATE_ID = "DuplicateStateId"
    MISSING_STATE_FOR_EDGE = "MissingStateForEdge"
    CIRCULAR_DEPENDENCY = "CircularDependency"
    DANGLING_DEPENDENCY_TAG = "DanglingDependencyTag"


class PlanValidationError(ValueError):
    def __init__(self, kind: PlanValidationErrorKind, message: str, state_ids: tuple[StateId, ...] = ()) -> None:
        super().__init__(message)
        self.kind = kind
        self.state_ids = state_ids


class PlanValidator(Protocol):
    def validate(self, plan: ExecutionPlan) -> None: ...


def validate_plan(plan: ExecutionPlan) -> None:
    """Raise :class:`PlanValidationError` for the first structural problem (§6.1 order)."""
    topological_order(plan)


def topological_order(plan: ExecutionPlan) -> list[StateId]:
    """Validate and return the deterministic Kahn order (declaration order, FIFO, edge order)."""
    states = plan.graph.states
    if not states:
        raise PlanValidationError(PlanValidationErrorKind.EMPTY_PLAN, "plan has no states")
    ids: list[StateId] = []
    seen: set[StateId] = set()
    for node in states:
        if node.id in seen:
            raise PlanValidationError(
                PlanValidationErrorKind.DUPLICATE_STATE_ID, f"duplicate state id: {node.id}", (node.id,)
            )
        seen.add(node.id)
        ids.append(node.id)
    indegree = dict.fromkeys(ids, 0)
    outgoing: dict[StateId, list[StateId]] = {i: [] for i in ids}
    for edge in plan.graph.edges:
        for end in (edge.from_, edge.to):
            if end not in seen:
                raise PlanValidationError(
                    PlanValidationErrorKind.MISSING_STATE_FOR_EDGE, f"edge refers to a missing state: {end}", (end,)
                )
        outgoing[edge.from_].append(edge.to)
        indegree[edge.to] += 1
    queue = deque(i for i in ids if indegree[i] == 0)
    order: list[StateId] = []
    while queue:
        node_id = queue.popleft()
        order.append(node_id)
        for target in outgoing[node_id]:
            indegree[target] -= 1
            if indegree[target] == 0:
                queue.append(target)
    if len(order) != len(ids):
        cycle = tuple(i for i in ids if indegree[i] > 0)
        raise PlanValidationError(
            PlanValidationErrorKind.CIRCULAR_DEPENDENCY, f"circular dependency among: {', '.join(cycle)}", cycle
        )
    return order
