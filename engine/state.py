"""States (the seed's ``state`` module).

A state is an object with ``meta()`` and an async ``handle(ctx, io, rec)``. It succeeds by
returning a ``StateOutcome`` and fails by raising ``StateError``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, runtime_checkable

from engine._wire import Frozen
from engine.context import DynContext
from engine.io import IoProvider
from engine.meta import StateMeta
from engine.recorder import EventRecorder

__all__ = ["DynState", "SnapshotPolicy", "State", "StateOutcome"]


class SnapshotPolicy(StrEnum):
    NEVER = "Never"
    ON_SUCCESS = "OnSuccess"
    ALWAYS = "Always"


class StateOutcome(Frozen):
    """The engine ignores ``snapshot`` (it always snapshots on success, ENGINE-SPEC §7.3)."""

    snapshot: SnapshotPolicy = SnapshotPolicy.ON_SUCCESS


@runtime_checkable
class State(Protocol):
    def meta(self) -> StateMeta: ...

    async def handle(self, ctx: DynContext, io: IoProvider, rec: EventRecorder) -> StateOutcome: ...


DynState = State
"""The seed's ``DynState`` (``Arc<dyn State>``): any object satisfying :class:`State`."""
