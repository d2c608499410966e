"""``encode_batch`` / ``validate_batch`` (ENGINE-SPEC §3.3): the hot-path shortcut for ``StateEntered`` and
``StateCompleted`` envelopes gives exactly the bytes and the verdicts of the generic path (model dump + canonical
walk), for valid envelopes and for every kind of bad one the engine could hand it (records built without
validation, as the runtime's writer builds them)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine._wire import construct
from engine.errors import StateError, StorageError
from engine.events import (
    DomainEvent,
    EventEnvelope,
    StateCompleted,
    StateEntered,
    StateFailed,
    encode_envelope,
    fact_event,
)
from engine.hashing import MAX_SAFE_INTEGER
from engine.ids import ArtifactId, RunId, StateId
from engine.stores import _base
from engine.stores._base import encode_batch, validate_batch

RUN = RunId("5e5e5e5e-0000-4000-8000-000000000001")
SNAP = ArtifactId("ab" * 32)


def _env(event: Any, *, seq: Any = 1, ts: Any = 1_760_000_000_000, run: Any = RUN) -> EventEnvelope:
    return construct(EventEnvelope, run_id=run, seq=seq, ts_millis=ts, event=event)


def _entered(state: Any = "machine.main.s1", attempt: Any = 0, base: Any = SNAP) -> StateEntered:
    return construct(StateEntered, state_id=state, attempt=attempt, base_snapshot_id=base)


def _completed(state: Any = "machine.main.s1", snap: Any = SNAP) -> StateCompleted:
    return construct(StateCompleted, state_id=state, context_snapshot_id=snap)


def _outcome(fn: Any, env: EventEnvelope) -> Any:
    try:
        return fn(RUN, int(env.seq) - 1 if type(env.seq) is int else 0, [env])
    except StorageError as exc:
        return (exc.kind, exc.code)


def _both(env: EventEnvelope, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    fast = _outcome(encode_batch, env)
    with monkeypatch.context() as m:
        m.setattr(_base, "_FAST_KERNEL", False)
        slow = _outcome(encode_batch, env)
    return fast, slow


def test_fast_path_is_enabled() -> None:
    assert _base._FAST_KERNEL


@pytest.mark.parametrize(
    "env",
    [
        _env(_entered(StateId("machine.main.s1"), 3)),
        _env(_completed(StateId("machine.main.s1"))),
        _env(_entered(StateId("machine.main.s1")), ts=None),
        _env(_completed(StateId("a.b.c")), seq=MAX_SAFE_INTEGER),
    ],
)
def test_valid_envelopes_encode_like_encode_envelope(env: EventEnvelope, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = _both(env, monkeypatch)
    assert fast == slow == [encode_envelope(env)]
    validate_batch(RUN, env.seq - 1, [env])  # does not raise


@pytest.mark.parametrize(
    ("env", "code"),
    [
        (_env(_entered(StateId("machine.main.password_reset"))), "secrets_detected"),
        (_env(_completed(StateId("machine.main.api_key_rotation"))), "secrets_detected"),
        (_env(_entered("machine.main.my password")), "secrets_detected"),  # not a StateId: generic walk
        (_env(_entered(StateId("machine.main.s1")), seq=MAX_SAFE_INTEGER + 1), "stream_payload_not_canonical"),
        (_env(_entered(StateId("machine.main.s1")), ts=2**60), "stream_payload_not_canonical"),
        (_env(_entered(StateId("machine.main.s1")), ts=1.5), "stream_payload_not_canonical"),
        (_env(_entered(StateId("machine.main.s1"), attempt=0.0)), "stream_payload_not_canonical"),
        (_env(_entered(StateId("machine.main.s1"), attempt=2**60)), "stream_payload_not_canonical"),
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # pydantic warns when dumping the float attempt
def test_bad_envelopes_fail_alike(env: EventEnvelope, code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = _both(env, monkeypatch)
    assert fast == slow
    assert fast[1] == code
    with pytest.raises(StorageError) as info:
        validate_batch(RUN, env.seq - 1 if type(env.seq) is int else 0, [env])
    assert info.value.code == code


def test_float_seq_equal_to_the_expected_one_is_not_canonical(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env(_completed(StateId("machine.main.s1")), seq=1.0)
    fast, slow = _both(env, monkeypatch)
    assert fast == slow
    assert fast[1] == "stream_payload_not_canonical"


segment = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    parts=st.tuples(segment, segment, segment),
    attempt=st.integers(min_value=0, max_value=2**32 - 1),
    ts=st.one_of(st.none(), st.integers(min_value=0, max_value=2**53)),
    entered=st.booleans(),
    snap=st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
)
def test_generated_kernel_envelopes_agree(
    parts: tuple[str, str, str], attempt: int, ts: int | None, entered: bool, snap: str
) -> None:
    state = StateId(".".join(parts))
    event = _entered(state, attempt, ArtifactId(snap)) if entered else _completed(state, ArtifactId(snap))
    env = _env(event, seq=7, ts=ts)
    fast = _outcome(encode_batch, env)
    _base._FAST_KERNEL = False
    try:
        slow = _outcome(encode_batch, env)
    finally:
        _base._FAST_KERNEL = True
    assert fast == slow
    if isinstance(fast, list):
        assert fast == [encode_envelope(env)]


def _failed_with_details(details: Any) -> StateFailed:
    return StateFailed(state_id=StateId("machine.main.s1"), error=StateError.new("boom", "it broke", details=details))


@pytest.mark.parametrize(
    ("event", "sorted_json"),
    [
        (
            construct(DomainEvent, name="n", payload={"b": 1, "a": 2}, payload_ref=None),
            b'"payload":{"a":2,"b":1}',
        ),
        (
            DomainEvent(name="n", payload=[{"z": {"y": 0, "x": [{"\U0001f600": 1, "\ue000": 2}]}, "a": None}]),
            '"payload":[{"a":null,"z":{"x":[{"\ue000":2,"\U0001f600":1}],"y":0}}]'.encode(),
        ),
        (fact_event("k", SNAP, {"z": "1", "a": "2"}), b'"payload":{"key":"k","meta":{"a":"2","z":"1"},"payload_id":'),
        (_failed_with_details({"zz": [{"b": 1, "a": 2}], "aa": {}}), b'"details":{"aa":{},"zz":[{"a":2,"b":1}]}'),
    ],
)
def test_unsorted_json_values_are_written_with_sorted_keys_on_both_paths(
    event: Any, sorted_json: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Payloads and error details are ``serde_json::Value``s: keys in code-point order at every level."""
    env = _env(event)
    fast, slow = _both(env, monkeypatch)
    assert fast == slow == [encode_envelope(env)]
    assert sorted_json in fast[0]


def _engine_batch(*envs: EventEnvelope) -> Any:
    from engine.stores import EngineBatch

    return EngineBatch(envs)


def test_an_engine_batch_is_not_checked_again_for_what_the_engine_made() -> None:
    """The writer's batches: an attempt number the engine made is not judged again (a plain list is judged)."""
    env = _env(_entered(StateId("machine.main.s1"), 2**60))
    assert _outcome(validate_batch, env)[1] == "stream_payload_not_canonical"
    validate_batch(RUN, 0, _engine_batch(env))  # does not raise
    assert isinstance(_engine_batch(env), list)


@pytest.mark.parametrize(
    ("env", "code"),
    [
        (_env(_entered(StateId("machine.main.s1")), ts=1.5), "stream_payload_not_canonical"),  # the clock's value
        (_env(_completed(StateId("machine.main.s1")), ts=2**60), "stream_payload_not_canonical"),
        (_env(_entered(StateId("machine.main.password"))), "secrets_detected"),  # the plan's state id
        (_env(_completed(StateId("machine.main.private_key"))), "secrets_detected"),
        (
            _env(
                construct(
                    StateFailed,
                    state_id=StateId("machine.main.s1"),
                    error=StateError.new("x", "y", details={"f": 1.5}),
                    failure_snapshot_id=None,
                )
            ),
            "stream_payload_not_canonical",
        ),
        (_env(construct(DomainEvent, name="n", payload={"password": "t"}, payload_ref=None)), "secrets_detected"),
    ],
)
def test_an_engine_batch_still_checks_what_came_from_outside(env: EventEnvelope, code: str) -> None:
    for validate in (validate_batch, encode_batch):
        with pytest.raises(StorageError) as ei:
            validate(RUN, 0, _engine_batch(env))
        assert ei.value.code == code
