"""mfm engine: a durable, event-sourced state-machine runtime (a port of the mfm-machine contract).

The public modules mirror the seed's: ``ids``, ``canonical``, ``config``, ``meta``, ``errors``,
``context``, ``events``, ``io``, ``recorder``, ``state``, ``plan``, ``stores``, ``engine`` and
``hashing``. This package never imports Textual, Rich or ``mfm_tui``.
"""

from engine._kinds import ArtifactKind
from engine.config import (
    BuildProvenance,
    ContextCheckpointing,
    Duration,
    EventProfile,
    Exponential,
    FanOutJoin,
    Fixed,
    IoMode,
    RetryPolicy,
    RunConfig,
    RunManifest,
    Sequential,
)
from engine.context import DynContext, JsonContext
from engine.engine import ExecutionEngine, RunPhase, RunResult, StartRun, Stores
from engine.errors import (
    ContextError,
    ErrorCategory,
    ErrorInfo,
    IoError,
    MfmError,
    RunError,
    StateError,
    StorageError,
)
from engine.events import (
    DomainEvent,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from engine.exec_transport import ExecTransportFactory
from engine.hashing import artifact_id_for_bytes, artifact_id_for_json, canonical_json_bytes
from engine.ids import ArtifactId, ContextKey, ErrorCode, FactKey, OpId, OpPath, RunId, StateId, StreamId
from engine.io import IoCall, IoProvider, IoResult
from engine.live_io_registry import LiveIoRegistry
from engine.live_io_router import LiveIoRouter, UnimplementedTransportFactory
from engine.meta import Idempotency, SideEffectKind, StateMeta
from engine.plan import DependencyEdge, ExecutionPlan, StateGraph, StateNode
from engine.recorder import EventRecorder
from engine.runtime import (
    CancelToken,
    Clock,
    Engine,
    Failpoints,
    RecoveryPlan,
    ReplayVerdict,
    Sleeper,
    plan_recovery,
    request_cancel,
    side_effect_fact_key,
)
from engine.state import SnapshotPolicy, State, StateOutcome
from engine.stores import ArtifactStore, EventStore, FsStore, MemoryStore

__version__ = "0.1.0"

__all__ = [
    "ArtifactId",
    "ArtifactKind",
    "ArtifactStore",
    "BuildProvenance",
    "CancelToken",
    "Clock",
    "ContextCheckpointing",
    "ContextError",
    "ContextKey",
    "DependencyEdge",
    "DomainEvent",
    "Duration",
    "DynContext",
    "Engine",
    "ErrorCategory",
    "ErrorCode",
    "ErrorInfo",
    "EventEnvelope",
    "EventProfile",
    "EventRecorder",
    "EventStore",
    "ExecTransportFactory",
    "ExecutionEngine",
    "ExecutionPlan",
    "Exponential",
    "FactKey",
    "Failpoints",
    "FanOutJoin",
    "Fixed",
    "FsStore",
    "Idempotency",
    "IoCall",
    "IoError",
    "IoMode",
    "IoProvider",
    "IoResult",
    "JsonContext",
    "LiveIoRegistry",
    "LiveIoRouter",
    "MemoryStore",
    "MfmError",
    "OpId",
    "OpPath",
    "RecoveryPlan",
    "ReplayVerdict",
    "RetryPolicy",
    "RunCompleted",
    "RunConfig",
    "RunError",
    "RunId",
    "RunManifest",
    "RunPhase",
    "RunResult",
    "RunStarted",
    "RunStatus",
    "Sequential",
    "SideEffectKind",
    "Sleeper",
    "SnapshotPolicy",
    "StartRun",
    "State",
    "StateCompleted",
    "StateEntered",
    "StateError",
    "StateFailed",
    "StateGraph",
    "StateId",
    "StateMeta",
    "StateNode",
    "StateOutcome",
    "StorageError",
    "Stores",
    "StreamId",
    "UnimplementedTransportFactory",
    "__version__",
    "artifact_id_for_bytes",
    "artifact_id_for_json",
    "canonical_json_bytes",
    "plan_recovery",
    "request_cancel",
    "side_effect_fact_key",
]
