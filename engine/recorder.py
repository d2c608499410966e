"""Domain event recording (the seed's ``recorder`` module)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from engine.events import DomainEvent

__all__ = ["EventRecorder"]


@runtime_checkable
class EventRecorder(Protocol):
    """Emits domain events into the run's stream (filtered by the event profile)."""

    async def emit(self, event: DomainEvent) -> None: ...

    async def emit_many(self, events: Sequence[DomainEvent]) -> None: ...
