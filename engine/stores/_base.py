"""Store interfaces (the seed's ``stores`` module) and the validation every backend shares.

``EventStore`` and ``ArtifactStore`` are the contract. Backends also implement the monitor's
extras (``RunLister``: list runs, learn cheaply what changed) and the control plane
(``ControlStore``: cancel requests that a running engine in another process notices).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from engine._kinds import ArtifactKind
from engine._secrets import contains_secrets
from engine._wire import compact_json
from engine.errors import StorageError
from engine.events import EventEnvelope
from engine.hashing import CanonicalJsonError, check_canonical_value
from engine.ids import ArtifactId, RunId

__all__ = [
    "ArtifactStore",
    "CancelRequest",
    "ChangeBatch",
    "ControlStore",
    "EventStore",
    "RunLister",
    "check_artifact_id",
    "check_run_id",
    "encode_batch",
]

CODE_CONCURRENCY = "event_store_concurrency"


@runtime_checkable
class EventStore(Protocol):
    """Per-run append-only event streams with optimistic concurrency (ENGINE-SPEC §0.1)."""

    async def head_seq(self, run_id: RunId) -> int:
        """Seq of the last envelope, 0 for an unknown run."""
        ...

    async def append(self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope]) -> int:
        """Append a batch atomically; return the new head. Stale ``expected_seq`` → Concurrency."""
        ...

    async def read_range(self, run_id: RunId, from_seq: int, to_seq: int | None = None) -> list[EventEnvelope]:
        """Envelopes with ``max(from_seq, 1) <= seq <= to_seq`` ascending; unknown run → ``[]``."""
        ...


@runtime_checkable
class ArtifactStore(Protocol):
    """Immutable content-addressed blobs."""

    async def put(self, kind: ArtifactKind, data: bytes) -> ArtifactId: ...

    async def get(self, artifact_id: ArtifactId) -> bytes: ...

    async def exists(self, artifact_id: ArtifactId) -> bool: ...


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """What changed since a cursor: the runs whose streams grew (or appeared) and a new cursor."""

    cursor: int
    runs: frozenset[RunId]


@runtime_checkable
class RunLister(Protocol):
    """What a monitor needs cheaply."""

    async def list_runs(self) -> list[RunId]:
        """Every run with at least one event, in no particular order."""
        ...

    async def changes_since(self, cursor: int | None) -> ChangeBatch:
        """Runs changed since ``cursor`` (``None``: start from now, returning no runs)."""
        ...


@dataclass(frozen=True, slots=True)
class CancelRequest:
    run_id: RunId
    requested_at_millis: int
    reason: str


@runtime_checkable
class ControlStore(Protocol):
    """Requests to a running run from any process (ENGINE-SPEC §0.6)."""

    async def request_cancel(self, run_id: RunId, reason: str = "") -> CancelRequest: ...

    async def cancel_request(self, run_id: RunId) -> CancelRequest | None: ...


def check_run_id(run_id: object) -> RunId:
    """Validate before any path or key is built from it."""
    try:
        return RunId(run_id)
    except ValueError as exc:
        raise StorageError.other("invalid_run_id", str(exc)) from exc


def check_artifact_id(artifact_id: object) -> ArtifactId:
    try:
        return ArtifactId(artifact_id)
    except ValueError as exc:
        raise StorageError.not_found("artifact_not_found", f"artifact not found: {exc}") from exc


def encode_batch(run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope]) -> list[bytes]:
    """Validate a batch (ENGINE-SPEC §3.3, §0.1) and return each envelope's wire bytes.

    Raises ``StorageError``: Other for an invalid record (wrong run id, floats, secrets),
    Concurrency for seqs that do not continue ``expected_seq`` contiguously.
    """
    lines: list[bytes] = []
    for i, env in enumerate(events):
        if not isinstance(env, EventEnvelope):
            raise StorageError.other("stream_record_invalid", f"record {i} is not an EventEnvelope")
        if env.run_id != run_id:
            raise StorageError.other("event_run_id_mismatch", f"record {i} belongs to run {env.run_id}, not {run_id}")
        if env.seq != expected_seq + 1 + i:
            raise StorageError.concurrency(
                CODE_CONCURRENCY,
                f"batch for run {run_id} is not contiguous after seq {expected_seq}: record {i} has seq {env.seq}",
            )
        kind = env.kind
        if not kind:
            raise StorageError.other("stream_record_invalid", f"record {i} (seq {env.seq}) has an empty kind")
        if contains_secrets(kind):
            raise StorageError.other("secrets_detected", f"record {i} has a secret-looking kind")
        payload = env.model_dump(mode="json")
        try:
            check_canonical_value(payload)
        except CanonicalJsonError as exc:
            if exc.is_secret:
                raise StorageError.other(
                    "secrets_detected", f"record {i} (seq {env.seq}) contains secret-looking content"
                ) from None
            raise StorageError.other(
                "stream_payload_not_canonical", f"record {i} (seq {env.seq}) is not canonical JSON: {exc}"
            ) from None
        lines.append(compact_json(payload).encode("utf-8"))  # == encode_envelope(env), without a second dump
    return lines
