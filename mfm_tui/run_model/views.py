"""The run model's value types: plan shape, facts, attempts, states and retry targets.

Part of :mod:`mfm_tui.run_model` (its face re-exports every public name); pure, no Textual, no IO.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.ids import ArtifactId, RunId, StateId
from engine.plan import ExecutionPlan, topological_order
from mfm_tui.run_model.enums import StateStatus

__all__ = ["AttemptView", "ChildRef", "FactRef", "PlanShape", "RetryTarget", "StateView"]


@dataclass(slots=True)
class ChildRef:
    """A child run as its parent's stream announces it (ENGINE-SPEC §16 linkage events).

    ``state_id``: the state whose attempt spawned it (``None`` when several attempts were open); ``status``: what
    the parent's ``child_run_completed`` recorded once it joined the child (``None`` before)."""

    run_id: RunId
    state_id: StateId | None
    spawned_seq: int
    status: str | None = None


@dataclass(frozen=True, slots=True)
class PlanShape:
    """The plan's states in topological order, its edges and each state's tags."""

    state_ids: tuple[StateId, ...]
    edges: tuple[tuple[StateId, StateId], ...] = ()
    tags: Mapping[StateId, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_plan(cls, plan: ExecutionPlan) -> PlanShape:
        tags: dict[StateId, tuple[str, ...]] = {}
        for node in plan.graph.states:
            try:
                tags[node.id] = tuple(node.state.meta().tags)
            except Exception:  # a state whose meta() fails still has a place in the graph
                tags[node.id] = ()
        return cls(
            state_ids=tuple(topological_order(plan)),
            edges=tuple((e.from_, e.to) for e in plan.graph.edges),
            tags=tags,
        )


@dataclass(frozen=True, slots=True)
class FactRef:
    seq: int
    key: str
    payload_id: ArtifactId | None


@dataclass(slots=True)
class AttemptView:
    """One attempt of a state: entered → (domain events) → completed | failed | still open."""

    attempt: int
    """0-based, as in ``StateEntered``."""
    entered_seq: int | None
    entered_millis: int | None
    base_snapshot_id: ArtifactId | None
    terminal_seq: int | None = None
    terminal_millis: int | None = None
    completed: bool = False
    result_snapshot_id: ArtifactId | None = None
    error_code: str | None = None
    error_message: str | None = None
    retryable: bool = False
    facts: list[FactRef] = field(default_factory=list)
    domain_events: int = 0

    @property
    def is_open(self) -> bool:
        return self.terminal_seq is None

    @property
    def failed(self) -> bool:
        return self.terminal_seq is not None and not self.completed

    def duration_millis(self, now_millis: int | None = None) -> int | None:
        end = self.terminal_millis if self.terminal_seq is not None else now_millis
        if self.entered_millis is None or end is None:
            return None
        return max(0, end - self.entered_millis)


@dataclass(slots=True)
class StateView:
    state_id: StateId
    status: StateStatus = StateStatus.PENDING
    attempts: list[AttemptView] = field(default_factory=list)
    max_attempts: int | None = None
    """From the manifest's retry policy (``None`` when unknown); at least 1."""
    not_before_millis: int | None = None
    """While retrying: when the next attempt may start (``retry_scheduled``, else derived)."""
    scheduled_next_attempt: int | None = None
    tags: tuple[str, ...] = ()

    @property
    def last(self) -> AttemptView | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def attempt_number(self) -> int:
        """1-based number of the current (or, while retrying, the next) attempt; 0 before the first."""
        last = self.last
        if last is None:
            return 0
        return last.attempt + (2 if self.status is StateStatus.RETRYING else 1)

    @property
    def attempt_label(self) -> str:
        """``2/5``, or ``2`` when the maximum is unknown."""
        n = self.attempt_number
        return f"{n}/{self.max_attempts}" if self.max_attempts is not None else str(n)

    @property
    def error(self) -> tuple[str, str] | None:
        """``(code, message)`` of the last failed attempt."""
        for att in reversed(self.attempts):
            if att.failed:
                return (att.error_code or "", att.error_message or "")
        return None

    @property
    def facts(self) -> list[FactRef]:
        return [f for att in self.attempts for f in att.facts]

    @property
    def short_name(self) -> str:
        return self.state_id.rsplit(".", 1)[-1]


@dataclass(frozen=True, slots=True)
class RetryTarget:
    """A state waiting for its next attempt: ``call 2/5 in 7s``."""

    state: StateView
    next_attempt_number: int
    max_attempts: int | None
    not_before_millis: int | None

    def remaining_millis(self, now_millis: int) -> int | None:
        return None if self.not_before_millis is None else max(0, self.not_before_millis - now_millis)
