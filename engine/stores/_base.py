"""Store interfaces (the seed's ``stores`` module) and the validation every backend shares.

``EventStore`` and ``ArtifactStore`` are the contract. Backends also implement the monitor's
extras (``RunLister``: list runs, learn cheaply what changed) and the control plane
(``ControlStore``: cancel requests that a running engine in another process notices).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from engine._kinds import ArtifactKind
from engine._secrets import contains_secrets
from engine._wire import compact_json
from engine.errors import StorageError
from engine.events import DomainEvent, EventEnvelope, StateCompleted, StateEntered
from engine.hashing import MAX_SAFE_INTEGER, CanonicalJsonError, check_canonical_value
from engine.ids import ArtifactId, RunId, StateId
from engine.run_summary import RunSummary

__all__ = [
    "CODE_CONCURRENCY",
    "ArtifactLister",
    "ArtifactStore",
    "Blob",
    "CancelRequest",
    "ChangeBatch",
    "ControlStore",
    "EngineBatch",
    "EventStore",
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
class Blob:
    """An artifact a step created, committed together with the events that refer to it (issue 12)."""

    artifact_id: ArtifactId
    kind: ArtifactKind
    data: bytes
    hashed: bool = field(default=False, compare=False, repr=False)
    """Set by :meth:`of` only: ``artifact_id`` was computed here from ``data`` (bytes), so a store need not hash
    ``data`` again to check it (a blob built field by field is checked)."""

    @classmethod
    def of(cls, kind: ArtifactKind, data: bytes) -> Blob:
        # a sha256 hexdigest is 64 lowercase hex digits: a valid ArtifactId without the pattern check
        data = bytes(data)
        if cls is not Blob:  # pragma: no cover - a subclass gets its own __init__
            return cls(str.__new__(ArtifactId, hashlib.sha256(data).hexdigest()), kind, data, True)
        blob = _new_blob(Blob)  # the frozen dataclass's __init__ without its frame (one blob per state)
        _set_blob_id(blob, str.__new__(ArtifactId, hashlib.sha256(data).hexdigest()))
        _set_blob_kind(blob, kind)
        _set_blob_data(blob, data)
        _set_blob_hashed(blob, True)
        return blob


_new_blob = object.__new__
_set_blob_id = Blob.__dict__["artifact_id"].__set__
_set_blob_kind = Blob.__dict__["kind"].__set__
_set_blob_data = Blob.__dict__["data"].__set__
_set_blob_hashed = Blob.__dict__["hashed"].__set__


class EngineBatch(list[EventEnvelope]):
    """A batch of envelopes the engine's writer made (issue 12): its run id and contiguous seqs are the writer's own,
    and every ``StateEntered`` / ``StateCompleted`` in it was built from typed values (ids, attempt numbers). The
    shared validation (:func:`validate_batch`, :func:`encode_batch`) checks of those two kinds only what the engine
    takes from outside (the clock's ``ts_millis``, the plan's state ids for secrets); every other record is checked
    in full. To any store it is a plain ``list``."""

    __slots__ = ()


@runtime_checkable
class UnitOfWork(Protocol):
    """A store that commits blobs and the events referring to them in ONE durable operation.

    Filesystem: one ``write`` + one ``fdatasync`` of the run's log; PostgreSQL: one transaction; memory: one atomic
    step. Same contract as ``EventStore.append`` (validation, optimistic concurrency on ``expected_seq``, returns the
    new head); after it returns, every blob is readable through the store's ``ArtifactStore.get``. A store without a
    unit of work still works: :func:`commit_unit` falls back to ``put`` each blob, then ``append``.
    """

    async def commit(
        self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope], blobs: Sequence[Blob]
    ) -> int: ...


async def commit_unit(
    events: EventStore,
    artifacts: ArtifactStore,
    run_id: RunId,
    expected_seq: int,
    envelopes: Sequence[EventEnvelope],
    blobs: Sequence[Blob],
) -> int:
    """Commit ``blobs`` and ``envelopes`` through ``events``' unit of work, or put-then-append without one."""
    if isinstance(events, UnitOfWork):
        return await events.commit(run_id, expected_seq, envelopes, blobs)
    for blob in blobs:
        got = await artifacts.put(blob.kind, blob.data)
        if str(got) != str(blob.artifact_id):
            raise StorageError.corruption(
                "artifact_put_id_mismatch",
                f"artifact store returned id {got} for a {blob.kind} artifact whose content hash is {blob.artifact_id}",
                {"expected": str(blob.artifact_id), "actual": str(got)},
            )
    return await events.append(run_id, expected_seq, envelopes)


def paired_unit_of_work(events: EventStore, artifacts: ArtifactStore) -> UnitOfWork | None:
    """``events`` as a unit of work if its commits land in ``artifacts``, else ``None`` (put each blob, then append).

    A unit of work writes blobs into its own artifact store. A store that names it in an ``artifact_store``
    attribute is used only when that is ``artifacts`` itself: ``Stores(events=e, artifacts=wrapper)`` keeps the
    wrapper's ``put`` (a test's lying store, a counting proxy) in the path of every blob. Without the attribute the
    store is trusted to pair with ``artifacts``.
    """
    if not isinstance(events, UnitOfWork):
        return None
    own = getattr(events, "artifact_store", None)
    return events if own is None or own is artifacts else None


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


@runtime_checkable
class ArtifactLister(Protocol):
    """Artifact ids by prefix (``mfm artifact 9c1e``), as run ids are resolved by prefix."""

    async def ids_with_prefix(self, prefix: str, limit: int) -> list[ArtifactId]:
        """At most ``limit`` stored ids starting with ``prefix`` (lowercase hex), sorted."""
        ...


@runtime_checkable
class RunSummaries(Protocol):
    """A store that keeps each run's summary (``engine.run_summary``) so a runs list never reads a whole run.

    A store without it is summarized from its events (``engine.run_summary.summarize``).
    """

    async def run_summary(self, run_id: RunId, *, max_fold_bytes: int | None = None) -> RunSummary | None:
        """The run's current summary (``None``: unknown run). With ``max_fold_bytes``, a summary that would need
        more of the log folded than that comes back provisional (``complete=False``): ask again without it."""
        ...

    async def run_summaries(self, *, max_fold_bytes: int | None = None) -> tuple[list[RunId], dict[RunId, RunSummary]]:
        """Every run (as ``list_runs``) and the summary of each (absent: nothing to summarize), read at once (a
        runs list's first load); ``max_fold_bytes`` as for :meth:`run_summary`."""
        ...

    async def first_run_summaries(self, n: int) -> dict[RunId, RunSummary]:
        """Up to ``n`` summaries of runs a runs list likely shows on top (unfinished, newest), as fast as the store
        can (a first screenful before :meth:`run_summaries`); may be empty."""
        ...


@dataclass(frozen=True, slots=True)
class CancelRequest:
    run_id: RunId
    requested_at_millis: int
    reason: str


@dataclass(frozen=True, slots=True)
class RetryNowRequest:
    """An operator's request to cut the backoff before ``attempt`` (the retry's ``next_attempt``) of a state short."""

    run_id: RunId
    state_id: str
    attempt: int
    requested_at_millis: int


@runtime_checkable
class ControlStore(Protocol):
    """Requests to a running run from any process (ENGINE-SPEC §0.6): cancel, and retry-now during a backoff."""

    async def request_cancel(self, run_id: RunId, reason: str = "") -> CancelRequest: ...

    async def cancel_request(self, run_id: RunId) -> CancelRequest | None: ...

    async def request_retry_now(self, run_id: RunId, state_id: str, attempt: int) -> RetryNowRequest:
        """Record the request (first one per ``(run, state, attempt)`` wins and is returned)."""
        ...

    async def retry_now_request(self, run_id: RunId, state_id: str, attempt: int) -> RetryNowRequest | None: ...


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
    # compact_json(value) == encode_envelope(env), without a second dump
    values = _validated_values(run_id, expected_seq, events, trusted=type(events) is EngineBatch)
    return [compact_json(value).encode("utf-8") for value in values]


def validate_batch(run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope]) -> None:
    """Exactly the checks of :func:`encode_batch`, for a store that keeps the typed envelopes (no encoding)."""
    trusted = type(events) is EngineBatch
    if _FAST_KERNEL:  # the engine's StateEntered / StateCompleted envelopes, judged in one tight loop
        seq = expected_seq
        for i, env in enumerate(events):
            seq += 1
            if (
                not trusted and (type(env) is not EventEnvelope or env.run_id != run_id or env.seq != seq)
            ) or _kernel_parts(env, trusted) is None:
                _validated_values(run_id, expected_seq, events, keep=False, start=i, trusted=trusted)  # and the rest
                return
        return
    _validated_values(run_id, expected_seq, events, keep=False, trusted=trusted)


# The envelope's own fields are dumped directly (ids are str subclasses, seq/ts_millis ints: their JSON text is the
# model's) and the event through the model's own serializer; anything else falls back to ``model_dump``.
_PLAIN_ENVELOPE = tuple(EventEnvelope.model_fields) == ("run_id", "seq", "ts_millis", "event")


def _envelope_value(env: EventEnvelope) -> Any:
    """``env.model_dump(mode="json")``, in a third of the time for the envelopes the engine makes."""
    if _PLAIN_ENVELOPE:
        ev = env.event
        event = {"Domain": ev.model_dump(mode="json")} if isinstance(ev, DomainEvent) else {"Kernel": ev.to_wire()}
        return {"run_id": env.run_id, "seq": env.seq, "ts_millis": env.ts_millis, "event": event}
    return env.model_dump(mode="json")  # pragma: no cover - only if the envelope model grows a field


def _safe_int(value: object) -> bool:
    return type(value) is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER


def _checked_kernel_value(env: EventEnvelope, trusted: bool = False) -> Any:
    """The wire value of a ``StateEntered`` / ``StateCompleted`` envelope (two per state: the hot path), validated
    field by field; ``None`` for anything else, or anything unusual, which the generic walk then judges.

    What the generic walk would check, minus what the types guarantee: a ``RunId`` (UUID) or ``ArtifactId``
    (64 hex chars) instance validated itself on construction, so it is a plain ASCII string that cannot look
    secret; a ``StateId`` (three ``[a-z][a-z0-9_]*`` segments) has no whitespace, so only the substring rule can
    match it; the field names and tags are constants. Integers must be exact ints in the I-JSON range.
    """
    parts = _kernel_parts(env, trusted)
    if parts is None:
        return None
    state_id, attempt, tail = parts
    ts = env.ts_millis
    if attempt is not None:
        event = {"Kernel": {"StateEntered": {"state_id": state_id, "attempt": attempt, "base_snapshot_id": tail}}}
    else:
        event = {"Kernel": {"StateCompleted": {"state_id": state_id, "context_snapshot_id": tail}}}
    return {"run_id": env.run_id, "seq": env.seq, "ts_millis": ts, "event": event}


def _kernel_parts(env: EventEnvelope, trusted: bool = False) -> tuple[StateId, int | None, ArtifactId] | None:
    """The checks of :func:`_checked_kernel_value`: its event's (state id, attempt or ``None``, snapshot id) when they
    pass, else ``None``. ``trusted`` (an :class:`EngineBatch`): the ids and numbers the engine made are not checked
    again, only ``ts_millis`` and the state id's secret scan."""
    ev = env.event
    limit = MAX_SAFE_INTEGER  # the checks of _safe_int, inline (two or three per envelope)
    if type(ev) is StateEntered:  # exactly these classes: a subclass may carry more fields
        entered: StateEntered = ev
        state_id, attempt, tail = entered.state_id, entered.attempt, entered.base_snapshot_id
        if not trusted and (type(attempt) is not int or not -limit <= attempt <= limit):
            return None
    elif type(ev) is StateCompleted:
        completed: StateCompleted = ev
        state_id, attempt, tail = completed.state_id, None, completed.context_snapshot_id
    else:
        return None
    ts = env.ts_millis
    if trusted:
        if not (ts is None or (type(ts) is int and -limit <= ts <= limit)):
            return None
    elif (
        type(env.run_id) is not RunId
        or type(tail) is not ArtifactId
        or type(state_id) is not StateId
        or type(env.seq) is not int
        or not -limit <= env.seq <= limit
        or not (ts is None or (type(ts) is int and -limit <= ts <= limit))
    ):
        return None
    secret = _STATE_ID_SECRET.get(state_id)
    if secret is None:
        secret = _secret_state_id(state_id)
    return None if secret else (state_id, attempt, tail)


_STATE_ID_SECRET: dict[str, bool] = {}  # state ids are few and immutable: scan each once (bounded below)


def _secret_state_id(state_id: str) -> bool:
    hit = _STATE_ID_SECRET.get(state_id)
    if hit is None:
        hit = contains_secrets(state_id)
        if len(_STATE_ID_SECRET) < 65536:
            _STATE_ID_SECRET[state_id] = hit
    return hit


def _fast_path_agrees() -> bool:
    """Self-check at import: the fast path is used only while it reproduces ``model_dump`` exactly."""
    run, snap, state = RunId("00000000-0000-4000-8000-000000000001"), ArtifactId("0" * 64), StateId("m.s.t")
    samples = [
        EventEnvelope(
            run_id=run, seq=1, ts_millis=7, event=StateEntered(state_id=state, attempt=2, base_snapshot_id=snap)
        ),
        EventEnvelope(run_id=run, seq=2, event=StateCompleted(state_id=state, context_snapshot_id=snap)),
    ]
    return all(_checked_kernel_value(e) == e.model_dump(mode="json") for e in samples)


_FAST_KERNEL = _PLAIN_ENVELOPE and _fast_path_agrees()


def _validated_values(
    run_id: RunId,
    expected_seq: int,
    events: Sequence[EventEnvelope],
    *,
    keep: bool = True,
    start: int = 0,
    trusted: bool = False,
) -> list[Any]:
    """The wire values of ``events``, validated; with ``keep=False`` only validated (an empty list: the fast path
    for ``StateEntered`` / ``StateCompleted`` then builds no value). ``start``: the records before it passed."""
    values: list[Any] = []
    for i in range(start, len(events)):
        env = events[i]
        # exact type first: pydantic models' isinstance goes through ABCMeta
        if type(env) is not EventEnvelope and not isinstance(env, EventEnvelope):
            raise StorageError.other("stream_record_invalid", f"record {i} is not an EventEnvelope")
        if env.run_id != run_id:
            raise StorageError.other("event_run_id_mismatch", f"record {i} belongs to run {env.run_id}, not {run_id}")
        if env.seq != expected_seq + 1 + i:
            raise StorageError.concurrency(
                CODE_CONCURRENCY,
                f"batch for run {run_id} is not contiguous after seq {expected_seq}: record {i} has seq {env.seq}",
            )
        ev = env.event
        t = type(ev)
        if t is not StateEntered and t is not StateCompleted and isinstance(ev, DomainEvent):
            # a kernel event's kind is its constant tag: never empty, never secret
            if not ev.name:
                raise StorageError.other("stream_record_invalid", f"record {i} (seq {env.seq}) has an empty kind")
            if contains_secrets(ev.name):
                raise StorageError.other("secrets_detected", f"record {i} has a secret-looking kind")
        if not keep and _FAST_KERNEL and _kernel_parts(env, trusted) is not None:
            continue
        value = _checked_kernel_value(env, trusted) if _FAST_KERNEL else None
        if value is not None:
            values.append(value)
            continue
        value = _envelope_value(env)
        try:
            check_canonical_value(value)  # one walk: floats, unsafe integers, non-JSON, secrets (keys and values)
        except CanonicalJsonError as exc:
            if exc.is_secret:
                raise StorageError.other(
                    "secrets_detected", f"record {i} (seq {env.seq}) contains secret-looking content"
                ) from None
            raise StorageError.other(
                "stream_payload_not_canonical", f"record {i} (seq {env.seq}) is not canonical JSON: {exc}"
            ) from None
        if keep:
            values.append(value)
    return values
