"""The error hierarchy: serde wire shapes of the seed's ``errors`` module, ``one_line``, ``RunError.wrap``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import TypeAdapter

from engine._wire import compact_json
from engine.errors import (
    CODE_MISSING_FACT_KEY,
    ContextError,
    ContextErrorKind,
    ErrorCategory,
    ErrorInfo,
    IoError,
    IoErrorKind,
    MfmError,
    RunError,
    RunErrorKind,
    StateError,
    StorageError,
    StorageErrorKind,
)
from engine.hashing import canonical_json_bytes
from engine.ids import ContextKey, ErrorCode, FactKey, StateId


def _info(code: str, category: str, retryable: bool, message: str, details: Any = None) -> dict[str, Any]:
    """ErrorInfo's serde form, fields in the seed's declaration order."""
    return {"code": code, "category": category, "retryable": retryable, "message": message, "details": details}


def _wire_text(err: MfmError) -> str:
    return compact_json(err.to_wire())


# -- ErrorInfo ----------------------------------------------------------------------------------


def test_error_info_fields_in_seed_order() -> None:
    info = ErrorInfo.new("c", "m", category=ErrorCategory.RPC, retryable=True, details={"b": 1, "a": [None]})
    # details is a serde_json Value: its keys are sorted (a BTreeMap), the struct's fields are not
    assert compact_json(info.model_dump(mode="json")) == (
        '{"code":"c","category":"Rpc","retryable":true,"message":"m","details":{"a":[null],"b":1}}'
    )
    assert isinstance(info.code, ErrorCode)


@pytest.mark.parametrize(
    ("category", "wire"),
    [
        (ErrorCategory.PARSING_INPUT, "ParsingInput"),
        (ErrorCategory.ON_CHAIN, "OnChain"),
        (ErrorCategory.OFF_CHAIN, "OffChain"),
        (ErrorCategory.RPC, "Rpc"),
        (ErrorCategory.STORAGE, "Storage"),
        (ErrorCategory.CONTEXT, "Context"),
        (ErrorCategory.UNKNOWN, "Unknown"),
    ],
)
def test_error_category_unit_variants(category: ErrorCategory, wire: str) -> None:
    assert TypeAdapter(ErrorCategory).dump_json(category) == json.dumps(wire).encode()
    assert TypeAdapter(ErrorCategory).validate_json(json.dumps(wire)) is category


def test_error_info_defaults() -> None:
    info = ErrorInfo.new("x", "y")
    assert info.category is ErrorCategory.UNKNOWN and info.retryable is False and info.details is None


def test_missing_fact_key_code_is_stable() -> None:
    """The seed's only stable code constant."""
    assert CODE_MISSING_FACT_KEY == "missing_fact_key"
    err = IoError.missing_fact_key()
    assert err.kind is IoErrorKind.MISSING_FACT_KEY
    assert err.code == "missing_fact_key"


# -- StateError -----------------------------------------------------------------------------------


def test_state_error_wire_with_and_without_state_id() -> None:
    err = StateError.new("flaky", "try again", retryable=True, state_id=StateId("machine.main.s1"))
    assert err.to_wire() == {"state_id": "machine.main.s1", "info": _info("flaky", "Unknown", True, "try again")}
    assert _wire_text(err).startswith('{"state_id":"machine.main.s1","info":{"code":"flaky",')
    bare = StateError.new("boom", "failed", category=ErrorCategory.OFF_CHAIN, details=[1, "two"])
    assert bare.to_wire() == {"state_id": None, "info": _info("boom", "OffChain", False, "failed", [1, "two"])}


def test_state_error_round_trips_through_from_wire() -> None:
    err = StateError.new("c", "m", details={"k": None}, state_id=StateId("a.b.c"))
    assert StateError.from_wire(json.loads(_wire_text(err))) == err
    assert TypeAdapter(StateError).validate_json(_wire_text(err)) == err


@pytest.mark.parametrize(
    "bad",
    [
        {"info": _info("c", "Unknown", False, "m")},
        {"state_id": None, "info": _info("c", "Unknown", False, "m"), "extra": 1},
        {"state_id": "not-a-state", "info": _info("c", "Unknown", False, "m")},
        {"state_id": None, "info": _info("c", "unknown", False, "m")},
        ["state_id", "info"],
        "StateError",
    ],
)
def test_state_error_from_wire_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        StateError.from_wire(bad)


# -- StorageError -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "tag"),
    [
        (StorageError.concurrency, "Concurrency"),
        (StorageError.not_found, "NotFound"),
        (StorageError.corruption, "Corruption"),
        (StorageError.other, "Other"),
    ],
)
def test_storage_error_wire(make: Any, tag: str) -> None:
    err = make("code_x", "msg", {"id": "a"})
    assert err.kind is StorageErrorKind(tag)
    assert err.to_wire() == {tag: _info("code_x", "Storage", False, "msg", {"id": "a"})}
    assert err.variant == "StorageError"


def test_storage_error_other_may_be_retryable() -> None:
    assert StorageError.other("io", "disk busy", retryable=True).to_wire()["Other"]["retryable"] is True


# -- IoError ----------------------------------------------------------------------------------


def test_io_error_wire_shapes() -> None:
    assert IoError.missing_fact_key().to_wire() == {
        "MissingFactKey": _info("missing_fact_key", "ParsingInput", False, "deterministic IO call requires a fact key")
    }
    missing = IoError.missing_fact(FactKey("http:get:x"), retryable=True)
    assert missing.key == "http:get:x"
    assert missing.to_wire() == {
        "MissingFact": {
            "key": "http:get:x",
            "info": _info("missing_fact", "Rpc", True, "missing recorded fact: http:get:x"),
        }
    }
    assert _wire_text(missing).startswith('{"MissingFact":{"key":"http:get:x","info":{')
    assert IoError.transport("exec_timeout", "t", retryable=True).to_wire() == {
        "Transport": _info("exec_timeout", "Unknown", True, "t")
    }
    assert IoError.other("io_unimplemented", "none", category=ErrorCategory.RPC).to_wire() == {
        "Other": _info("io_unimplemented", "Rpc", False, "none")
    }
    limited = IoError(IoErrorKind.RATE_LIMITED, ErrorInfo.new("rate_limited", "slow down", retryable=True))
    assert limited.to_wire() == {"RateLimited": _info("rate_limited", "Unknown", True, "slow down")}


def test_io_error_missing_fact_redacts_secret_keys_in_message() -> None:
    err = IoError.missing_fact(FactKey("api_key:abc"))
    assert "api_key" not in err.message
    assert err.message == "missing recorded fact: <redacted>"


# -- ContextError -----------------------------------------------------------------------------


def test_context_error_wire_shapes() -> None:
    assert ContextError.serialization("context_serialize_failed", "m").to_wire() == {
        "Serialization": _info("context_serialize_failed", "Context", False, "m")
    }
    assert ContextError.other("secrets_detected", "s").to_wire() == {
        "Other": _info("secrets_detected", "Context", False, "s")
    }
    missing = ContextError(
        ContextErrorKind.MISSING_KEY,
        ErrorInfo.new("missing_key", "no x", category=ErrorCategory.CONTEXT),
        key=ContextKey("x"),
    )
    assert missing.to_wire() == {"MissingKey": {"key": "x", "info": _info("missing_key", "Context", False, "no x")}}


# -- RunError -----------------------------------------------------------------------------------


def test_run_error_own_variants() -> None:
    assert RunError.invalid_plan("invalid_plan", "cycle", {"cycle": ["a.b.c"]}).to_wire() == {
        "InvalidPlan": _info("invalid_plan", "Unknown", False, "cycle", {"cycle": ["a.b.c"]})
    }
    assert RunError.other("domain_event_invalid", "bad", category=ErrorCategory.PARSING_INPUT).to_wire() == {
        "Other": _info("domain_event_invalid", "ParsingInput", False, "bad")
    }


INNER: list[tuple[MfmError, RunErrorKind, str]] = [
    (StorageError.corruption("artifact_not_canonical", "not canonical"), RunErrorKind.STORAGE, "Storage"),
    (StorageError.not_found("run_not_found", "no run"), RunErrorKind.STORAGE, "Storage"),
    (ContextError.serialization("context_snapshot_not_object", "not an object"), RunErrorKind.CONTEXT, "Context"),
    (
        ContextError(ContextErrorKind.MISSING_KEY, ErrorInfo.new("missing_key", "k"), key=ContextKey("k")),
        RunErrorKind.CONTEXT,
        "Context",
    ),
    (IoError.missing_fact(FactKey("k")), RunErrorKind.IO, "Io"),
    (IoError.missing_fact_key(), RunErrorKind.IO, "Io"),
    (IoError.transport("exec_failed", "exit 1"), RunErrorKind.IO, "Io"),
    (StateError.new("boom", "bad", state_id=StateId("m.s.x")), RunErrorKind.STATE, "State"),
]


@pytest.mark.parametrize(("inner", "kind", "tag"), INNER, ids=[f"{t}-{e.code}" for e, _, t in INNER])
def test_run_error_wrap(inner: MfmError, kind: RunErrorKind, tag: str) -> None:
    err = RunError.wrap(inner)
    assert err.kind is kind
    assert err.cause is inner
    assert err.info == inner.info
    assert err.code == inner.code and err.message == inner.message and err.retryable == inner.retryable
    assert err.to_wire() == {tag: inner.to_wire()}
    assert err.one_line() == f"error[{inner.code}]: {inner.message}"
    canonical_json_bytes(err.to_wire())  # wire forms are canonical-JSON compatible


def test_run_error_wrap_is_idempotent() -> None:
    err = RunError.invalid_plan("invalid_plan", "empty")
    assert RunError.wrap(err) is err
    wrapped = RunError.wrap(StorageError.other("x", "y"))
    assert RunError.wrap(wrapped) is wrapped


def test_run_error_wrap_of_a_plain_mfm_error_is_other_with_error_info() -> None:
    base = MfmError(ErrorInfo.new("plain", "plain failure"))
    err = RunError.wrap(base)
    assert err.kind is RunErrorKind.OTHER
    assert err.cause is base
    # Other holds an ErrorInfo, never a nested error.
    assert err.to_wire() == {"Other": _info("plain", "Unknown", False, "plain failure")}


# -- text forms, equality ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "err",
    [
        StateError.new("flaky", "try again"),
        StorageError.corruption("artifact_put_id_mismatch", "store lied"),
        IoError.missing_fact_key(),
        ContextError.other("secrets_detected", "secret-looking content"),
        RunError.invalid_plan("invalid_plan", "plan has a cycle"),
    ],
)
def test_one_line_and_str(err: MfmError) -> None:
    assert err.one_line() == f"error[{err.code}]: {err.message}"
    assert "\n" not in err.one_line()
    assert str(err) == f"[{err.code}] {err.message}"
    assert err.code in repr(err)
    assert isinstance(err, Exception)


def test_errors_compare_by_value() -> None:
    a = StorageError.corruption("c", "m")
    assert a == StorageError.corruption("c", "m")
    assert a != StorageError.other("c", "m")
    assert a != StateError.new("c", "m")
    assert hash(a) == hash(StorageError.corruption("c", "m"))
    assert StateError.new("c", "m", state_id=StateId("a.b.c")) != StateError.new("c", "m")
    assert IoError.missing_fact(FactKey("a")) != IoError.missing_fact(FactKey("b"))


def test_errors_are_raisable_and_catchable_as_mfm_error() -> None:
    with pytest.raises(MfmError) as info:
        raise StorageError.not_found("artifact_not_found", "gone")
    assert info.value.code == "artifact_not_found"
