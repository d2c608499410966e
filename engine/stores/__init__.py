"""Event and artifact stores: the contract, the in-memory backend and the filesystem backend."""

from engine._kinds import ArtifactKind
from engine.stores._base import (
    ArtifactStore,
    CancelRequest,
    ChangeBatch,
    ControlStore,
    EventStore,
    RunLister,
)
from engine.stores.fs import FsArtifactStore, FsEventStore, FsStore
from engine.stores.memory import MemoryArtifactStore, MemoryEventStore, MemoryStore

__all__ = [
    "ArtifactKind",
    "ArtifactStore",
    "CancelRequest",
    "ChangeBatch",
    "ControlStore",
    "EventStore",
    "FsArtifactStore",
    "FsEventStore",
    "FsStore",
    "MemoryArtifactStore",
    "MemoryEventStore",
    "MemoryStore",
    "RunLister",
]
