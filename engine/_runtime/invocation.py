"""What one start/resume invocation shares between its tasks (:class:`Invocation`), and where a state's next attempt
starts (:class:`Override`): used by the executor, the scheduler and the attempt pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine._runtime.cancel import CancelWatcher
from engine._runtime.clock import Clock, Failpoints, Sleeper
from engine._runtime.context_runtime import SnapshotCache
from engine._runtime.facts import FactIndex
from engine._runtime.recorder import ProfileRecorder
from engine._runtime.writer import EventWriter
from engine.config import RunConfig
from engine.engine import Stores
from engine.ids import ArtifactId, RunId, StateId
from engine.meta import StateMeta
from engine.plan import ExecutionPlan
from engine.state import State
from engine.transport import LiveTransportFactory

__all__ = ["Invocation", "Override"]


@dataclass(frozen=True, slots=True)
class Override:
    attempt: int
    base_snapshot_id: ArtifactId


@dataclass
class Invocation:
    """Everything one start/resume invocation shares between its tasks."""

    stores: Stores
    run_id: RunId
    plan: ExecutionPlan
    order: list[StateId]
    config: RunConfig
    writer: EventWriter
    facts: FactIndex
    snapshots: SnapshotCache
    factory: LiveTransportFactory
    clock: Clock
    sleeper: Sleeper
    random_source: Callable[[int], bytes] | None
    failpoints: Failpoints | None
    watcher: CancelWatcher
    checkpoint_id: ArtifactId
    checkpoint_value: dict[str, Any] | None  # loaded lazily (resume)
    completed: dict[StateId, ArtifactId] = field(default_factory=dict)
    states: dict[StateId, State] = field(default_factory=dict)
    metas: dict[StateId, StateMeta] = field(default_factory=dict)
    skip_tags: frozenset[str] = frozenset()
    recorder: ProfileRecorder = field(init=False)
    """The ``EventRecorder`` every attempt's handler gets: it holds nothing of its own attempt."""

    def __post_init__(self) -> None:
        if not self.states:
            self.states = {n.id: n.state for n in self.plan.graph.states}
        if not self.metas:
            self.metas = {sid: st.meta() for sid, st in self.states.items()}
        self.skip_tags = frozenset(self.config.skip_tags)
        self.recorder = ProfileRecorder(self.config.event_profile, self.writer, self.facts)
