"""Run trees (ENGINE-SPEC §16 child runs): who is whose child, and a parent's summary of its children.

Part of :mod:`mfm_tui.run_model` (its face re-exports every public name); pure, no Textual, no IO.

A child's stream does not name its parent; the parent's ``child_run_spawned`` events name the children. So the
links are made by whoever holds both models (:func:`link_children`): it sets each child's ``parent_run_id`` and,
since a child runs as a task of its parent's worker and holds no lease of its own, gives a child without a lease
its parent's lease (a child of a lost worker is shown "worker lost", not "running").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.ids import RunId, StateId
from mfm_tui.run_model.enums import URGENCY, LeaseStatus, RunDisplayStatus
from mfm_tui.run_model.fold import RunModel

__all__ = ["ChildSummary", "child_summary", "link_children", "tree_order"]


def link_children(models: Mapping[RunId, RunModel]) -> None:
    """Set ``parent_run_id`` on every child present in ``models`` (and its lease from the parent's)."""
    for model in models.values():
        for child_id in model.children:
            child = models.get(child_id)
            if child is None:
                continue
            child.parent_run_id = model.run_id
            if child.lease in (LeaseStatus.NONE, LeaseStatus.UNKNOWN) and not child.status.is_finished:
                child.set_lease(model.lease)


@dataclass(frozen=True, slots=True)
class ChildSummary:
    """How a parent's children (or one state's) stand: counts and the worst status."""

    total: int
    completed: int
    failed: int
    running: int
    worst: RunDisplayStatus | None

    @property
    def badge(self) -> str:
        """``3 children: 2 ✓ 1 ✗`` (running ones as ``… 1 ⟳``); empty without children."""
        if not self.total:
            return ""
        noun = "child" if self.total == 1 else "children"
        parts = []
        if self.completed:
            parts.append(f"{self.completed} ✓")
        if self.failed:
            parts.append(f"{self.failed} ✗")
        if self.running:
            parts.append(f"{self.running} ⟳")
        return f"{self.total} {noun}: {' '.join(parts)}" if parts else f"{self.total} {noun}"


_BAD = (
    RunDisplayStatus.FAILED,
    RunDisplayStatus.CANCELLED,
    RunDisplayStatus.CRASH_LOOPING,
    RunDisplayStatus.NOT_STARTED,
)


def child_summary(parent: RunModel, models: Mapping[RunId, RunModel], state_id: StateId | None = None) -> ChildSummary:
    """Summary of ``parent``'s children (of one state when ``state_id`` is given), from the children's own models
    when loaded (live), else from the status the parent recorded when it joined them."""
    refs = parent.children_of_state(state_id) if state_id is not None else list(parent.children.values())
    statuses: list[RunDisplayStatus] = []
    for ref in refs:
        child = models.get(ref.run_id)
        if child is not None:
            statuses.append(child.status)
        elif ref.status is not None:
            statuses.append(RunDisplayStatus(ref.status.lower()))
        else:
            statuses.append(RunDisplayStatus.RUNNING)
    completed = sum(1 for s in statuses if s is RunDisplayStatus.COMPLETED)
    failed = sum(1 for s in statuses if s in _BAD)
    worst = min(statuses, key=lambda s: URGENCY.get(s, 99)) if statuses else None
    return ChildSummary(len(statuses), completed, failed, len(statuses) - completed - failed, worst)


def tree_order(models: Sequence[RunModel]) -> list[tuple[RunModel, int]]:
    """``models`` (already sorted) as a tree: each parent followed by its children (depth 1, spawn order).

    A child whose parent is not among ``models`` (filtered out) stays at the top level."""
    present = {m.run_id: m for m in models}
    out: list[tuple[RunModel, int]] = []
    for model in models:
        if model.parent_run_id is not None and model.parent_run_id in present:
            continue
        out.append((model, 0))
        for child_id in model.children:
            child = present.get(child_id)
            if child is not None:
                out.append((child, 1))
    return out
