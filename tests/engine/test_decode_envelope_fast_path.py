"""``decode_envelope``'s shortcut for domain events, ``StateEntered`` and ``StateCompleted`` (the read path of every
resume) decodes exactly what ``EventEnvelope.model_validate`` decodes, into equal models that re-encode to the same
bytes, and lets everything else (other kinds, any bad field) through to the model, which then decides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import events
from engine._wire import parse_json
from engine.errors import StorageError
from engine.events import DomainEvent, EventEnvelope, StateCompleted, StateEntered, decode_envelope, encode_envelope
from engine.ids import ArtifactId, RunId, StateId

DATA = Path(__file__).resolve().parent.parent / "data"
RUN = "1f0e2d3c-4b5a-4697-8877-a1b2c3d4e5f6"
SNAP = "ab" * 32


def _slow(line: bytes | str) -> Any:
    try:
        return EventEnvelope.model_validate(parse_json(line))
    except (ValueError, UnicodeDecodeError):  # pydantic's ValidationError is a ValueError
        return "error"


def _fast(line: bytes | str) -> Any:
    try:
        return decode_envelope(line)
    except StorageError as exc:
        assert exc.code == "machine_event_decode_failed"
        return "error"


def _same(line: bytes | str) -> Any:
    fast, slow = _fast(line), _slow(line)
    assert fast == slow
    if fast != "error":
        assert fast.__pydantic_fields_set__ == slow.__pydantic_fields_set__
        assert type(fast.event) is type(slow.event)
        assert {k: type(v) for k, v in fast.__dict__.items()} == {k: type(v) for k, v in slow.__dict__.items()}
        assert vars(fast.event) == vars(slow.event)
        assert encode_envelope(fast) == encode_envelope(slow)
        if not isinstance(fast.event, DomainEvent):  # a domain payload may be a dict: unhashable either way
            assert hash(fast) == hash(slow)
    return fast


def _line(event: Any, **env: Any) -> str:
    value = {"run_id": RUN, "seq": 3, "ts_millis": 1_760_000_000_000, "event": event}
    value.update(env)
    return json.dumps(value)


def _entered(**f: Any) -> dict[str, Any]:
    return {"Kernel": {"StateEntered": {"state_id": "machine.main.s1", "attempt": 0, "base_snapshot_id": SNAP, **f}}}


def _completed(**f: Any) -> dict[str, Any]:
    return {"Kernel": {"StateCompleted": {"state_id": "machine.main.s1", "context_snapshot_id": SNAP, **f}}}


def _domain(**f: Any) -> dict[str, Any]:
    return {"Domain": {"name": "progress", "payload": {"n": 1}, "payload_ref": None, **f}}


def test_fast_path_is_taken_for_common_envelopes() -> None:
    for event in (_entered(), _completed(), _domain()):
        assert events._decode_common(json.loads(_line(event))) is not None


@pytest.mark.parametrize("path", [*sorted(DATA.glob("envelope_*.json")), DATA / "w1_stream.jsonl"], ids=str)
def test_golden_envelopes_decode_alike(path: Path) -> None:
    for line in path.read_bytes().splitlines():
        env = _same(line)
        assert encode_envelope(env) == line


GOOD = [
    _line(_entered(attempt=2**32 - 1)),
    _line(_completed(), ts_millis=None),
    _line(_completed(), seq=2**64 - 1, ts_millis=2**64 - 1),
    _line(_domain(payload_ref=SNAP)),
    _line(_domain(payload=None)),
    _line(_domain(payload=[1, "x", {"y": [True, None, -5]}])),
    _line(_domain(payload=12345678901234567890123)),
    _line(_domain(name="")),
    _line(_domain(payload=[0, "@NEG0@", {"b": "@NEG0@"}])).replace('"@NEG0@"', "-0"),  # the float -0.0, as serde
    _line(_domain(payload={"b": 1, "a": {"d": [{"f": 0, "e": 1}], "c": 2}})),  # keys in any order
    json.dumps({"seq": 3, "event": _entered(), "run_id": RUN, "ts_millis": 5}),  # other key order
]

BAD_OR_OTHER = [
    _line(_entered(), seq=True),
    _line(_entered(), seq=1.0),
    _line(_entered(), seq=0),
    _line(_entered(), seq=2**64),
    _line(_entered(), seq="3"),
    _line(_entered(), ts_millis=-1),
    _line(_entered(), ts_millis=2**64),
    _line(_entered(), ts_millis=True),
    _line(_entered(), ts_millis=1.5),
    _line(_entered(), run_id="not-a-uuid"),
    _line(_entered(), run_id=RUN.upper()),
    _line(_entered(), run_id=5),
    _line(_entered(), extra=1),
    json.dumps({"run_id": RUN, "seq": 3, "event": _entered()}),  # no ts_millis: the model's default
    _line(_entered(attempt=-1)),
    _line(_entered(attempt=2**32)),
    _line(_entered(attempt=True)),
    _line(_entered(attempt=0.0)),
    _line(_entered(state_id="Machine.main.s1")),
    _line(_entered(state_id="machine.main")),
    _line(_entered(base_snapshot_id="AB" * 32)),
    _line(_entered(base_snapshot_id=None)),
    _line(_entered(extra=1)),
    _line({"Kernel": {"StateEntered": {"state_id": "machine.main.s1", "attempt": 0}}}),
    _line(_completed(context_snapshot_id="x")),
    _line(_completed(state_id=7)),
    _line(_completed(extra=None)),
    _line(_domain(payload_ref="x")),
    _line(_domain(payload_ref=5)),
    _line(_domain(name=5)),
    _line(_domain(extra=1)),
    _line({"Domain": {"name": "x", "payload": 1}}),
    _line({"Kernel": {"StateEntered": {}, "StateCompleted": {}}}),
    _line({"Kernel": "StateEntered"}),
    _line({"Kernel": {"RunCompleted": {"status": "Completed", "final_snapshot_id": SNAP}}}),
    _line({"Kernel": {"RunStarted": {"op_id": "w1", "manifest_id": SNAP, "initial_snapshot_id": SNAP}}}),
    _line({"Other": {}}),
    _line({**_domain(), **_entered()}),
    _line([]),
    _line(_entered(), ts_millis="@NEG0@").replace('"@NEG0@"', "-0"),  # serde_json reads -0 as a float
    _line(_entered(attempt="@NEG0@")).replace('"@NEG0@"', "-0"),
    _line(_entered(), seq="@NEG0@").replace('"@NEG0@"', "-0"),
    _line(_domain(payload="@NAN@")).replace('"@NAN@"', "NaN"),  # not JSON for serde_json
    _line(_domain(payload="@INF@")).replace('"@INF@"', "-Infinity"),
    "[]",
    "null",
    "{",
    "",
]


@pytest.mark.parametrize("line", GOOD)
def test_valid_lines_decode_alike(line: str) -> None:
    assert _same(line) != "error"


def test_negative_zero_and_unsorted_payloads_re_encode_as_serde_json_writes_them() -> None:
    """serde_json reads ``-0`` as the float -0.0 (written back ``-0.0``) and writes a ``Value``'s keys sorted."""
    line = _line(_domain(payload={"b": "@NEG0@", "a": [{"d": 1, "c": "@NEG0@"}]})).replace('"@NEG0@"', "-0")
    env = decode_envelope(line)
    assert isinstance(env.event, DomainEvent) and isinstance(env.event.payload, dict)
    assert repr(env.event.payload["b"]) == "-0.0"
    assert b'"payload":{"a":[{"c":-0.0,"d":1}],"b":-0.0}' in encode_envelope(env)
    for line in (
        _line(_entered(), ts_millis="@NEG0@"),  # today read as 0 and accepted
        _line(_entered(attempt="@NEG0@")),
        _line(_entered(), seq="@NEG0@"),
    ):
        with pytest.raises(StorageError) as info:
            decode_envelope(line.replace('"@NEG0@"', "-0"))
        assert info.value.code == "machine_event_decode_failed"


@pytest.mark.parametrize("line", BAD_OR_OTHER)
def test_other_and_invalid_lines_decode_alike(line: str) -> None:
    _same(line)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
segment = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
hex64 = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["entered", "completed", "domain"]),
    seq=st.integers(min_value=1, max_value=2**64 - 1),
    ts=st.none() | st.integers(min_value=0, max_value=2**64 - 1),
    parts=st.tuples(segment, segment, segment),
    attempt=st.integers(min_value=0, max_value=2**32 - 1),
    snap=hex64,
    name=st.text(max_size=10),
    payload=json_values,
    ref=st.none() | hex64,
    run=st.uuids(),
)
def test_generated_envelopes_round_trip_alike(
    kind: str,
    seq: int,
    ts: int | None,
    parts: tuple[str, str, str],
    attempt: int,
    snap: str,
    name: str,
    payload: Any,
    ref: str | None,
    run: Any,
) -> None:
    state = StateId(".".join(parts))
    event: Any
    if kind == "entered":
        event = StateEntered(state_id=state, attempt=attempt, base_snapshot_id=ArtifactId(snap))
    elif kind == "completed":
        event = StateCompleted(state_id=state, context_snapshot_id=ArtifactId(snap))
    else:
        event = DomainEvent(name=name, payload=payload, payload_ref=None if ref is None else ArtifactId(ref))
    env = EventEnvelope(run_id=RunId(str(run)), seq=seq, ts_millis=ts, event=event)
    line = encode_envelope(env)
    assert _same(line) == env
    assert encode_envelope(decode_envelope(line)) == line
