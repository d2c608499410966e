"""Engine API types (the seed's ``engine`` module): phases, results, ``StartRun``, ``Stores``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from engine._wire import Frozen
from engine.config import RunConfig, RunManifest
from engine.context import DynContext
from engine.ids import ArtifactId, RunId
from engine.plan import ExecutionPlan

if TYPE_CHECKING:  # annotations only: the stores import Stores from here
    from engine.stores import ArtifactStore, ControlStore, EventStore

__all__ = ["ExecutionEngine", "RunPhase", "RunResult", "StartRun", "Stores"]


class RunPhase(StrEnum):
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class RunResult(Frozen):
    run_id: RunId
    phase: RunPhase
    final_snapshot_id: ArtifactId | None = None


@dataclass(frozen=True, slots=True)
class StartRun:
    """Everything ``start`` needs. The manifest must already be stored under ``manifest_id``."""

    manifest: RunManifest
    manifest_id: ArtifactId
    plan: ExecutionPlan
    run_config: RunConfig
    initial_context: DynContext


@dataclass(frozen=True, slots=True)
class Stores:
    """The stores a run reads and writes. ``control`` carries cancel requests (optional)."""

    events: EventStore
    artifacts: ArtifactStore
    control: ControlStore | None = None


@runtime_checkable
class ExecutionEngine(Protocol):
    async def start(self, stores: Stores, run: StartRun) -> RunResult: ...

    async def resume(self, stores: Stores, run_id: RunId) -> RunResult: ...
