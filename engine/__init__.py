"""mfm engine: a durable, event-sourced state-machine runtime (a port of the mfm-machine contract).

The public modules mirror the seed's: ``ids``, ``canonical``, ``config``, ``meta``, ``errors``,
``context``, ``events``, ``io``, ``recorder``, ``state``, ``plan``, ``stores``, ``engine`` and
``hashing``, beside the runtime modules (``runtime``, ``live_io``, ``replay_io``, ``live_io_router``,
``live_io_registry``, ``exec_transport``, ``process_exec``). This package re-exports every type,
trait, constant and free function of the seed's public API (``tests/engine/test_exports.py`` holds
that), plus the runtime's entry points. It never imports Textual, Rich or ``mfm_tui``.

Names resolve on first use (PEP 562 ``__getattr__``): ``import engine`` (or ``from engine.ids import RunId``) no
longer imports the runtime, the workers and every pydantic model, which cost the TUI 0.29 s of its start
(``python -X importtime -c "import mfm_tui.cli, mfm_tui.app"``, issue 15). ``from engine import X`` is unchanged.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine._kinds import (
        ArtifactKind,
    )
    from engine._runtime.clock import SystemClock
    from engine.canonical import (
        CanonicalJsonPolicy,
        canonical_json_bytes,
    )
    from engine.config import (
        BackoffPolicy,
        BuildProvenance,
        ContextCheckpointing,
        Duration,
        EventProfile,
        ExecutionMode,
        Exponential,
        FanOutJoin,
        Fixed,
        IoMode,
        RetryPolicy,
        RunConfig,
        RunManifest,
        Sequential,
        default_nix_flake_allowlist,
    )
    from engine.context import (
        DynContext,
        JsonContext,
        TypedContextExt,
    )
    from engine.engine import (
        ExecutionEngine,
        RunPhase,
        RunResult,
        StartRun,
        Stores,
    )
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
        DOMAIN_EVENT_ARTIFACT_WRITTEN,
        DOMAIN_EVENT_CHILD_RUN_COMPLETED,
        DOMAIN_EVENT_CHILD_RUN_SPAWNED,
        DOMAIN_EVENT_FACT_RECORDED,
        DOMAIN_EVENT_OP_BOUNDARY,
        ArtifactWritten,
        ChildRunCompleted,
        ChildRunSpawned,
        DomainEvent,
        Event,
        EventEnvelope,
        FactRecorded,
        KernelEvent,
        OpBoundary,
        RunCompleted,
        RunStarted,
        RunStatus,
        StateCompleted,
        StateEntered,
        StateFailed,
    )
    from engine.exec_transport import (
        ExecTransportFactory,
    )
    from engine.hashing import (
        artifact_id_for_bytes,
        artifact_id_for_json,
    )
    from engine.ids import (
        ArtifactId,
        ContextKey,
        ErrorCode,
        FactKey,
        IdValidationError,
        OpId,
        OpPath,
        RunId,
        StateId,
        StreamId,
    )
    from engine.io import (
        IoCall,
        IoProvider,
        IoResult,
    )
    from engine.live_io_registry import (
        LiveIoRegistry,
    )
    from engine.live_io_router import (
        LiveIoRouter,
        UnimplementedTransportFactory,
    )
    from engine.meta import (
        DependencyStrategy,
        Idempotency,
        SideEffectKind,
        StateMeta,
        Tag,
        standard_tags,
    )
    from engine.plan import (
        DependencyEdge,
        ExecutionPlan,
        PlanValidationError,
        PlanValidator,
        StateGraph,
        StateNode,
    )
    from engine.recorder import (
        EventRecorder,
    )
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
        request_retry_now,
        side_effect_fact_key,
    )
    from engine.state import (
        DynState,
        SnapshotPolicy,
        State,
        StateOutcome,
    )
    from engine.stores import (
        ArtifactStore,
        EventStore,
        FsStore,
        MemoryStore,
    )

_WHERE: dict[str, str] = {
    "ArtifactId": "engine.ids",
    "ArtifactKind": "engine._kinds",
    "ArtifactStore": "engine.stores",
    "ArtifactWritten": "engine.events",
    "BackoffPolicy": "engine.config",
    "BuildProvenance": "engine.config",
    "CancelToken": "engine.runtime",
    "CanonicalJsonPolicy": "engine.canonical",
    "ChildRunCompleted": "engine.events",
    "ChildRunSpawned": "engine.events",
    "Clock": "engine._runtime.clock",  # engine.runtime re-exports them: its import is the whole runtime
    "ContextCheckpointing": "engine.config",
    "ContextError": "engine.errors",
    "ContextKey": "engine.ids",
    "DOMAIN_EVENT_ARTIFACT_WRITTEN": "engine.events",
    "DOMAIN_EVENT_CHILD_RUN_COMPLETED": "engine.events",
    "DOMAIN_EVENT_CHILD_RUN_SPAWNED": "engine.events",
    "DOMAIN_EVENT_FACT_RECORDED": "engine.events",
    "DOMAIN_EVENT_OP_BOUNDARY": "engine.events",
    "DependencyEdge": "engine.plan",
    "DependencyStrategy": "engine.meta",
    "DomainEvent": "engine.events",
    "Duration": "engine.config",
    "DynContext": "engine.context",
    "DynState": "engine.state",
    "Engine": "engine.runtime",
    "ErrorCategory": "engine.errors",
    "ErrorCode": "engine.ids",
    "ErrorInfo": "engine.errors",
    "Event": "engine.events",
    "EventEnvelope": "engine.events",
    "EventProfile": "engine.config",
    "EventRecorder": "engine.recorder",
    "EventStore": "engine.stores",
    "ExecTransportFactory": "engine.exec_transport",
    "ExecutionEngine": "engine.engine",
    "ExecutionMode": "engine.config",
    "ExecutionPlan": "engine.plan",
    "Exponential": "engine.config",
    "FactKey": "engine.ids",
    "FactRecorded": "engine.events",
    "Failpoints": "engine._runtime.clock",  # engine.runtime re-exports them: its import is the whole runtime
    "FanOutJoin": "engine.config",
    "Fixed": "engine.config",
    "FsStore": "engine.stores",
    "IdValidationError": "engine.ids",
    "Idempotency": "engine.meta",
    "IoCall": "engine.io",
    "IoError": "engine.errors",
    "IoMode": "engine.config",
    "IoProvider": "engine.io",
    "IoResult": "engine.io",
    "JsonContext": "engine.context",
    "KernelEvent": "engine.events",
    "LiveIoRegistry": "engine.live_io_registry",
    "LiveIoRouter": "engine.live_io_router",
    "MemoryStore": "engine.stores",
    "MfmError": "engine.errors",
    "OpBoundary": "engine.events",
    "OpId": "engine.ids",
    "OpPath": "engine.ids",
    "PlanValidationError": "engine.plan",
    "PlanValidator": "engine.plan",
    "RecoveryPlan": "engine.runtime",
    "ReplayVerdict": "engine.runtime",
    "RetryPolicy": "engine.config",
    "RunCompleted": "engine.events",
    "RunConfig": "engine.config",
    "RunError": "engine.errors",
    "RunId": "engine.ids",
    "RunManifest": "engine.config",
    "RunPhase": "engine.engine",
    "RunResult": "engine.engine",
    "RunStarted": "engine.events",
    "RunStatus": "engine.events",
    "Sequential": "engine.config",
    "SideEffectKind": "engine.meta",
    "Sleeper": "engine._runtime.clock",  # engine.runtime re-exports them: its import is the whole runtime
    "SnapshotPolicy": "engine.state",
    "StartRun": "engine.engine",
    "State": "engine.state",
    "StateCompleted": "engine.events",
    "StateEntered": "engine.events",
    "StateError": "engine.errors",
    "StateFailed": "engine.events",
    "StateGraph": "engine.plan",
    "StateId": "engine.ids",
    "StateMeta": "engine.meta",
    "StateNode": "engine.plan",
    "StateOutcome": "engine.state",
    "StorageError": "engine.errors",
    "Stores": "engine.engine",
    "SystemClock": "engine._runtime.clock",
    "StreamId": "engine.ids",
    "Tag": "engine.meta",
    "TypedContextExt": "engine.context",
    "UnimplementedTransportFactory": "engine.live_io_router",
    "artifact_id_for_bytes": "engine.hashing",
    "artifact_id_for_json": "engine.hashing",
    "canonical_json_bytes": "engine.canonical",
    "default_nix_flake_allowlist": "engine.config",
    "plan_recovery": "engine.runtime",
    "request_cancel": "engine.runtime",
    "request_retry_now": "engine.runtime",
    "side_effect_fact_key": "engine.runtime",
    "standard_tags": "engine.meta",
}
"""Each public name's module (imported when the name is first read)."""


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later reads are plain module attributes
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__version__ = "0.1.0"

__all__ = [
    "DOMAIN_EVENT_ARTIFACT_WRITTEN",
    "DOMAIN_EVENT_CHILD_RUN_COMPLETED",
    "DOMAIN_EVENT_CHILD_RUN_SPAWNED",
    "DOMAIN_EVENT_FACT_RECORDED",
    "DOMAIN_EVENT_OP_BOUNDARY",
    "ArtifactId",
    "ArtifactKind",
    "ArtifactStore",
    "ArtifactWritten",
    "BackoffPolicy",
    "BuildProvenance",
    "CancelToken",
    "CanonicalJsonPolicy",
    "ChildRunCompleted",
    "ChildRunSpawned",
    "Clock",
    "ContextCheckpointing",
    "ContextError",
    "ContextKey",
    "DependencyEdge",
    "DependencyStrategy",
    "DomainEvent",
    "Duration",
    "DynContext",
    "DynState",
    "Engine",
    "ErrorCategory",
    "ErrorCode",
    "ErrorInfo",
    "Event",
    "EventEnvelope",
    "EventProfile",
    "EventRecorder",
    "EventStore",
    "ExecTransportFactory",
    "ExecutionEngine",
    "ExecutionMode",
    "ExecutionPlan",
    "Exponential",
    "FactKey",
    "FactRecorded",
    "Failpoints",
    "FanOutJoin",
    "Fixed",
    "FsStore",
    "IdValidationError",
    "Idempotency",
    "IoCall",
    "IoError",
    "IoMode",
    "IoProvider",
    "IoResult",
    "JsonContext",
    "KernelEvent",
    "LiveIoRegistry",
    "LiveIoRouter",
    "MemoryStore",
    "MfmError",
    "OpBoundary",
    "OpId",
    "OpPath",
    "PlanValidationError",
    "PlanValidator",
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
    "SystemClock",
    "Tag",
    "TypedContextExt",
    "UnimplementedTransportFactory",
    "__version__",
    "artifact_id_for_bytes",
    "artifact_id_for_json",
    "canonical_json_bytes",
    "default_nix_flake_allowlist",
    "plan_recovery",
    "request_cancel",
    "request_retry_now",
    "side_effect_fact_key",
    "standard_tags",
]
