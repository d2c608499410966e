"""Kernel and domain events and their envelope (the seed's ``events`` module).

Python shape: ``EventEnvelope.event`` holds either a kernel event variant (``RunStarted``,
``StateEntered``, ``StateCompleted``, ``StateFailed``, ``RunCompleted``) or a ``DomainEvent``.
Wire shape (ENGINE-SPEC §4.4): ``{"Kernel": {"StateEntered": {...}}}`` or ``{"Domain": {...}}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import Field, PlainSerializer, PlainValidator, ValidationError

from engine._kinds import ArtifactKind
from engine._wire import Frozen, Variant, WireJsonValue, compact_json, construct, parse_json, tagged_union_schema
from engine.errors import StateError, StorageError
from engine.ids import ArtifactId, FactKey, OpId, OpPath, RunId, StateId

__all__ = [
    "DOMAIN_EVENT_ARTIFACT_WRITTEN",
    "DOMAIN_EVENT_CHILD_RUN_COMPLETED",
    "DOMAIN_EVENT_CHILD_RUN_SPAWNED",
    "DOMAIN_EVENT_FACT_RECORDED",
    "DOMAIN_EVENT_OP_BOUNDARY",
    "DOMAIN_EVENT_RECOVERED_FROM",
    "DOMAIN_EVENT_RETRY_SCHEDULED",
    "ArtifactWritten",
    "ChildRunCompleted",
    "ChildRunSpawned",
    "DomainEvent",
    "Event",
    "EventEnvelope",
    "FactRecorded",
    "KernelEvent",
    "OpBoundary",
    "RecoveredFrom",
    "RetryScheduled",
    "RunCompleted",
    "RunStarted",
    "RunStatus",
    "StateCompleted",
    "StateEntered",
    "StateFailed",
    "decode_envelope",
    "decode_trusted",
    "encode_envelope",
    "fact_event",
]

DOMAIN_EVENT_FACT_RECORDED = "fact_recorded"
DOMAIN_EVENT_ARTIFACT_WRITTEN = "artifact_written"
DOMAIN_EVENT_OP_BOUNDARY = "op_boundary"
DOMAIN_EVENT_CHILD_RUN_SPAWNED = "child_run_spawned"
DOMAIN_EVENT_CHILD_RUN_COMPLETED = "child_run_completed"
DOMAIN_EVENT_RETRY_SCHEDULED = "retry_scheduled"
"""This project's addition (ENGINE-SPEC §0.7)."""
DOMAIN_EVENT_RECOVERED_FROM = "recovered_from"
"""This project's addition: the first domain event of a recovery run (see ``Engine.recover``)."""


class RunStatus(StrEnum):
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class RunStarted(Variant):
    op_id: OpId
    manifest_id: ArtifactId
    initial_snapshot_id: ArtifactId


class StateEntered(Variant):
    state_id: StateId
    attempt: int = Field(ge=0, le=2**32 - 1, strict=True)
    base_snapshot_id: ArtifactId


class StateCompleted(Variant):
    state_id: StateId
    context_snapshot_id: ArtifactId


class StateFailed(Variant):
    state_id: StateId
    error: StateError
    failure_snapshot_id: ArtifactId | None = None


class RunCompleted(Variant):
    status: RunStatus
    final_snapshot_id: ArtifactId | None = None


_KERNEL = (RunStarted, StateEntered, StateCompleted, StateFailed, RunCompleted)
_kernel_decode, _kernel_encode = tagged_union_schema(_KERNEL, "KernelEvent")
KernelEvent = Annotated[
    RunStarted | StateEntered | StateCompleted | StateFailed | RunCompleted,
    PlainValidator(_kernel_decode),
    PlainSerializer(_kernel_encode),
]
KERNEL_EVENT_TYPES = _KERNEL


class DomainEvent(Frozen):
    """A domain event: a name, a JSON payload and an optional artifact reference."""

    name: str
    payload: WireJsonValue
    payload_ref: ArtifactId | None = None


def _event_decode(value: Any) -> Any:
    if isinstance(value, (*_KERNEL, DomainEvent)):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((tag, body),) = value.items()
        if tag == "Kernel":
            return _kernel_decode(body)
        if tag == "Domain":
            return DomainEvent.model_validate(body)
    raise ValueError(f"invalid Event: {value!r}"[:300])


def _event_encode(value: Any) -> Any:
    if isinstance(value, DomainEvent):
        return {"Domain": value.model_dump(mode="json")}
    return {"Kernel": value.to_wire()}


Event = Annotated[
    RunStarted | StateEntered | StateCompleted | StateFailed | RunCompleted | DomainEvent,
    PlainValidator(_event_decode),
    PlainSerializer(_event_encode),
]


class EventEnvelope(Frozen):
    """One record of a run's event stream: caller-assigned 1-based ``seq``."""

    run_id: RunId
    seq: int = Field(ge=1, le=2**64 - 1, strict=True)
    ts_millis: int | None = Field(default=None, ge=0, le=2**64 - 1, strict=True)
    event: Event

    @property
    def is_kernel(self) -> bool:
        return not isinstance(self.event, DomainEvent)

    @property
    def kind(self) -> str:
        """``RunStarted`` … for kernel events, the domain event's name otherwise."""
        ev = self.event
        return ev.name if isinstance(ev, DomainEvent) else type(ev).tag()

    def to_json(self) -> str:
        return compact_json(self.model_dump(mode="json"))


def encode_envelope(envelope: EventEnvelope) -> bytes:
    """The seed's serde wire form, compact, UTF-8 (one line of an event file)."""
    return envelope.to_json().encode("utf-8")


def decode_envelope(data: bytes | str) -> EventEnvelope:
    """Parse one wire-form envelope; malformed input → ``Corruption machine_event_decode_failed``."""
    try:
        raw = parse_json(data)
        return _decode_common(raw) or EventEnvelope.model_validate(raw)
    except (ValueError, ValidationError, UnicodeDecodeError) as exc:
        raise StorageError.corruption(
            "machine_event_decode_failed", f"event record could not be decoded: {exc}"[:400]
        ) from exc


# Fast decoding of the envelopes that make up nearly every stream (resume reads whole streams): domain events and
# StateEntered / StateCompleted, checked field by field exactly as the models would (strict ints and their bounds,
# ids through their own constructors, no missing or extra keys) and built without a second validation pass. Any
# other shape, or anything that fails a check, returns None and goes through ``model_validate``, which then decides
# (and words the error). A domain payload needs no check: whatever ``parse_json`` returns is a ``JsonValue``.
_U64 = 2**64 - 1
_U32 = 2**32 - 1
_ENVELOPE_KEYS = frozenset(("run_id", "seq", "ts_millis", "event"))
_DOMAIN_KEYS = frozenset(("name", "payload", "payload_ref"))
_ENTERED_KEYS = frozenset(("state_id", "attempt", "base_snapshot_id"))
_COMPLETED_KEYS = frozenset(("state_id", "context_snapshot_id"))


def _built(cls: type[Frozen], /, **fields: Any) -> Any:
    """An instance of ``cls`` with exactly ``fields`` (already valid, given in declaration order)."""
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", fields)
    object.__setattr__(obj, "__pydantic_fields_set__", set(fields))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


def _id_or_none(cls: type[Any], value: Any) -> Any:
    if type(value) is not str:
        return None
    try:
        return cls(value)
    except ValueError:
        return None


def _decode_common(raw: Any) -> EventEnvelope | None:
    if type(raw) is not dict or raw.keys() != _ENVELOPE_KEYS:
        return None
    seq, ts, wrapper = raw["seq"], raw["ts_millis"], raw["event"]
    if (
        type(seq) is not int
        or not 1 <= seq <= _U64
        or (ts is not None and (type(ts) is not int or not 0 <= ts <= _U64))
    ):
        return None
    if type(wrapper) is not dict or len(wrapper) != 1:
        return None
    ((tag, body),) = wrapper.items()
    if type(body) is not dict:
        return None
    event: Any
    if tag == "Domain":
        if body.keys() != _DOMAIN_KEYS or type(body["name"]) is not str:
            return None
        ref = body["payload_ref"]
        if ref is not None and (ref := _id_or_none(ArtifactId, ref)) is None:
            return None
        event = _built(DomainEvent, name=body["name"], payload=body["payload"], payload_ref=ref)
    elif tag == "Kernel" and len(body) == 1:
        ((kind, fields),) = body.items()
        if type(fields) is not dict:
            return None
        if kind == "StateEntered" and fields.keys() == _ENTERED_KEYS:
            attempt = fields["attempt"]
            if type(attempt) is not int or not 0 <= attempt <= _U32:
                return None
            state = _id_or_none(StateId, fields["state_id"])
            base = _id_or_none(ArtifactId, fields["base_snapshot_id"])
            if state is None or base is None:
                return None
            event = _built(StateEntered, state_id=state, attempt=attempt, base_snapshot_id=base)
        elif kind == "StateCompleted" and fields.keys() == _COMPLETED_KEYS:
            state = _id_or_none(StateId, fields["state_id"])
            snap = _id_or_none(ArtifactId, fields["context_snapshot_id"])
            if state is None or snap is None:
                return None
            event = _built(StateCompleted, state_id=state, context_snapshot_id=snap)
        else:
            return None
    else:
        return None
    run_id = _id_or_none(RunId, raw["run_id"])
    if run_id is None:
        return None
    envelope: EventEnvelope = _built(EventEnvelope, run_id=run_id, seq=seq, ts_millis=ts, event=event)
    return envelope


def decode_trusted(bodies: Iterable[bytes]) -> list[EventEnvelope]:
    """Envelopes whose bytes the engine itself wrote, as a record checksum proves (filesystem store format v2).

    The common shapes (domain events, ``StateEntered``, ``StateCompleted``) are parsed with orjson and built without
    re-checking each field (their ids made once per distinct value): those checks passed when the envelope was
    encoded, and the checksum shows the bytes have not changed since. Anything else (another kernel event, or a
    shape that does not fit) goes through :func:`decode_envelope`, validated as always.
    """
    out: list[EventEnvelope] = []
    append = out.append
    # ids made once per distinct value, one table per id type (no key tuple per lookup)
    run_ids: dict[str, RunId] = {}
    state_ids: dict[str, StateId] = {}
    artifact_ids: dict[str, ArtifactId] = {}
    new, setattr_ = object.__new__, object.__setattr__
    domain_cls, entered_cls, completed_cls, envelope_cls = DomainEvent, StateEntered, StateCompleted, EventEnvelope
    domain_fields, entered_fields = frozenset(_DOMAIN_KEYS), frozenset(_ENTERED_KEYS)
    completed_fields, envelope_fields = frozenset(_COMPLETED_KEYS), frozenset(_ENVELOPE_KEYS)

    def built(cls: type[Any], fields: dict[str, Any], names: frozenset[str]) -> Any:
        obj = new(cls)
        setattr_(obj, "__dict__", fields)
        setattr_(obj, "__pydantic_fields_set__", set(names))
        setattr_(obj, "__pydantic_extra__", None)
        setattr_(obj, "__pydantic_private__", None)
        return obj

    loads = orjson.loads
    for body in bodies:
        try:
            raw = loads(body)
            wrapper = raw["event"]
            domain = wrapper.get("Domain")
            event: Any
            if domain is not None:
                ref = domain["payload_ref"]
                if ref is not None:
                    ref = artifact_ids.get(ref) or artifact_ids.setdefault(ref, ArtifactId(ref))
                event = built(
                    domain_cls,
                    {"name": domain["name"], "payload": domain["payload"], "payload_ref": ref},
                    domain_fields,
                )
            else:
                kernel = wrapper["Kernel"]
                entered = kernel.get("StateEntered")
                if entered is not None:
                    sid, aid = entered["state_id"], entered["base_snapshot_id"]
                    event = built(
                        entered_cls,
                        {
                            "state_id": state_ids.get(sid) or state_ids.setdefault(sid, StateId(sid)),
                            "attempt": entered["attempt"],
                            "base_snapshot_id": artifact_ids.get(aid) or artifact_ids.setdefault(aid, ArtifactId(aid)),
                        },
                        entered_fields,
                    )
                else:
                    completed = kernel["StateCompleted"]
                    sid, aid = completed["state_id"], completed["context_snapshot_id"]
                    event = built(
                        completed_cls,
                        {
                            "state_id": state_ids.get(sid) or state_ids.setdefault(sid, StateId(sid)),
                            "context_snapshot_id": artifact_ids.get(aid)
                            or artifact_ids.setdefault(aid, ArtifactId(aid)),
                        },
                        completed_fields,
                    )
            rid = raw["run_id"]
            append(
                built(
                    envelope_cls,
                    {
                        "run_id": run_ids.get(rid) or run_ids.setdefault(rid, RunId(rid)),
                        "seq": raw["seq"],
                        "ts_millis": raw["ts_millis"],
                        "event": event,
                    },
                    envelope_fields,
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            append(decode_envelope(body))
    return out


class FactRecorded(Frozen):
    key: FactKey
    payload_id: ArtifactId
    meta: WireJsonValue = Field(default_factory=dict)


class ArtifactWritten(Frozen):
    artifact_id: ArtifactId
    kind: ArtifactKind
    meta: WireJsonValue = Field(default_factory=dict)


class OpBoundary(Frozen):
    op_path: OpPath
    phase: str


class ChildRunSpawned(Frozen):
    parent_run_id: RunId
    child_run_id: RunId
    child_manifest_id: ArtifactId


class ChildRunCompleted(Frozen):
    child_run_id: RunId
    status: RunStatus
    final_snapshot_id: ArtifactId | None = None


class RecoveredFrom(Frozen):
    """Payload of the ``recovered_from`` domain event: where a recovery run comes from."""

    source_run_id: RunId
    failed_state_id: StateId | None
    carried_states: int


class RetryScheduled(Frozen):
    """Payload of the ``retry_scheduled`` domain event (ENGINE-SPEC §0.7)."""

    state_id: StateId
    failed_attempt: int = Field(ge=0, strict=True)
    next_attempt: int = Field(ge=0, strict=True)
    delay_ms: int = Field(ge=0, strict=True)
    not_before_millis: int = Field(ge=0, strict=True)


def fact_event(key: str, payload_id: ArtifactId, meta: dict[str, str] | None = None) -> DomainEvent:
    """The ``fact_recorded`` domain event binding ``key`` to the payload artifact ``payload_id`` (§11)."""
    return construct(
        DomainEvent,
        name=DOMAIN_EVENT_FACT_RECORDED,
        payload={"key": str(key), "payload_id": str(payload_id), "meta": dict(meta or {})},
        payload_ref=None,
    )
