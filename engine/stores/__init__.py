"""Event and artifact stores: the contract, the in-memory backend and the filesystem backend.

The contract (the seed's ``stores`` module) is ``EventStore`` and ``ArtifactStore``; backends also offer the
monitor's ``RunLister`` and the control plane's ``ControlStore``. Backends: :mod:`engine.stores.memory`,
:mod:`engine.stores.fs` (its on-disk layout and run-log framing: :mod:`engine.stores.fs.framing`) and
:mod:`engine.stores.postgres` (needs the optional ``psycopg``, so it is not imported here).
"""

from engine._kinds import ArtifactKind
from engine.stores._base import (
    CODE_CONCURRENCY,
    ArtifactLister,
    ArtifactStore,
    Blob,
    CancelRequest,
    ChangeBatch,
    ControlStore,
    EngineBatch,
    EventStore,
    RetryNowRequest,
    RunLister,
    RunSummaries,
    UnitOfWork,
    check_artifact_id,
    check_run_id,
    commit_unit,
    encode_batch,
    paired_unit_of_work,
    validate_batch,
)
from engine.stores.fs import FsArtifactStore, FsEventStore, FsStore
from engine.stores.memory import MemoryArtifactStore, MemoryEventStore, MemoryStore

__all__ = [
    "CODE_CONCURRENCY",
    "ArtifactKind",
    "ArtifactLister",
    "ArtifactStore",
    "Blob",
    "CancelRequest",
    "ChangeBatch",
    "ControlStore",
    "EngineBatch",
    "EventStore",
    "FsArtifactStore",
    "FsEventStore",
    "FsStore",
    "MemoryArtifactStore",
    "MemoryEventStore",
    "MemoryStore",
    "RetryNowRequest",
    "RunLister",
    "RunSummaries",
    "UnitOfWork",
    "check_artifact_id",
    "check_run_id",
    "commit_unit",
    "encode_batch",
    "paired_unit_of_work",
    "validate_batch",
]
