"""CONFORMANCE.md section A: identifiers (ENGINE-SPEC §1)."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import TypeAdapter, ValidationError

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
    is_valid_id_segment,
)

# -- A1 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("segment", ["a", "a0", "a_0b", "a" * 63, "z9_", "abc_def_123"])
def test_a1_segment_rule_accepts(segment: str) -> None:
    assert is_valid_id_segment(segment)
    assert OpId(segment) == segment


@pytest.mark.parametrize(
    "segment",
    ["", "_a", "A", "a-1", "0a", "a" * 64, "aB", "a.b", "a b", "é", "a\u0131", "ａ", "a\n", " a"],
)
def test_a1_segment_rule_rejects(segment: str) -> None:
    assert not is_valid_id_segment(segment)
    with pytest.raises(IdValidationError):
        OpId(segment)


def test_a1_segment_rule_is_about_bytes_not_chars() -> None:
    """63 *bytes*: a non-ASCII character can never appear, so char and byte counts agree."""
    assert not is_valid_id_segment("a" * 62 + "é")


# -- A2 ---------------------------------------------------------------------------------------


def test_a2_op_id_accepts_snake_case() -> None:
    op = OpId("portfolio_tracker")
    assert op == "portfolio_tracker"
    assert op.as_str == "portfolio_tracker"
    assert str(op) == "portfolio_tracker"


@pytest.mark.parametrize("value", ["PortfolioTracker", "portfolio-tracker"])
def test_a2_op_id_rejects_with_kind_op_id(value: str) -> None:
    with pytest.raises(IdValidationError) as info:
        OpId(value)
    assert info.value.kind == "op_id"
    assert info.value.value == value
    assert str(info.value) == f"invalid op_id: {value}"


def test_a2_deserialising_bad_op_json_string_fails() -> None:
    """A2: deserialising the JSON string "bad-op" as an OpId fails."""
    adapter = TypeAdapter(OpId)
    with pytest.raises(ValidationError) as info:
        adapter.validate_json('"bad-op"')
    assert "invalid op_id: bad-op" in str(info.value)
    assert adapter.validate_json('"good_op"') == OpId("good_op")
    assert adapter.dump_json(OpId("good_op")) == b'"good_op"'


@pytest.mark.parametrize("raw", ["1", "null", '["op"]', '{"0":"op"}'])
def test_a2_op_id_from_non_string_json_fails(raw: str) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(OpId).validate_json(raw)


def test_a2_op_id_non_string_python_value_fails() -> None:
    with pytest.raises(IdValidationError):
        OpId(123)


# -- A3 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["machine.main", "machine.main.extra", "a.b.c.d"])
def test_a3_op_path_accepts(value: str) -> None:
    assert OpPath(value) == value


@pytest.mark.parametrize("value", ["m0._", "machine", "Machine.main", "machine.ma-in", "", "machine.", ".main", "a..b"])
def test_a3_op_path_rejects(value: str) -> None:
    with pytest.raises(IdValidationError) as info:
        OpPath(value)
    assert info.value.kind == "op_path"


def test_a3_op_path_parts() -> None:
    p = OpPath("portfolio_snapshot.fetch_balances.reporting")
    assert (p.machine, p.step) == ("portfolio_snapshot", "fetch_balances")
    assert p.child_path == "reporting"
    assert p.flattened_child_path == "reporting"
    deep = OpPath("a.b.c.d")
    assert deep.child_path == "c.d"
    assert deep.flattened_child_path == "c__d"
    flat = OpPath("machine.main")
    assert flat.child_path is None and flat.flattened_child_path is None


def test_a3_op_path_deserialisation_validates() -> None:
    adapter = TypeAdapter(OpPath)
    assert adapter.validate_json('"machine.main"') == "machine.main"
    with pytest.raises(ValidationError):
        adapter.validate_json('"machine"')


# -- A4 ---------------------------------------------------------------------------------------


def test_a4_state_id_accepts() -> None:
    assert StateId("machine.main.setup") == "machine.main.setup"


@pytest.mark.parametrize(
    "value", ["machine.main", "machine.main.setup.extra", "machine.Main.setup", "machine.main.set-up", "..", ""]
)
def test_a4_state_id_rejects(value: str) -> None:
    with pytest.raises(IdValidationError) as info:
        StateId(value)
    assert info.value.kind == "state_id"


def test_a4_state_id_deserialising_four_parts_fails() -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(StateId).validate_json('"machine.main.extra.parts"')
    assert TypeAdapter(StateId).validate_json('"machine.main.extra"') == StateId("machine.main.extra")


def test_a4_state_id_parts() -> None:
    s = StateId("portfolio_snapshot.fetch_balances.read_eth")
    assert s.machine == "portfolio_snapshot"
    assert s.step == "fetch_balances"
    assert s.state_local_id == "read_eth"


# -- A5 ---------------------------------------------------------------------------------------


def test_a5_artifact_id_accepts_64_lowercase_hex() -> None:
    assert ArtifactId("0" * 64) == "0" * 64
    assert ArtifactId("0123456789abcdef" * 4).short == "0123456789ab"


@pytest.mark.parametrize("value", ["0" * 63, "0" * 65, "A" * 64, "0" * 63 + "F", "g" * 64, "0" * 63 + " ", ""])
def test_a5_artifact_id_rejects(value: str) -> None:
    with pytest.raises(IdValidationError) as info:
        ArtifactId(value)
    assert info.value.kind == "artifact_id"


def test_a5_artifact_id_deserialisation_validates() -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(ArtifactId).validate_json(json.dumps("AB" * 32))


# -- A6 ---------------------------------------------------------------------------------------


def test_a6_stream_id_accepts() -> None:
    """A6 [derived]: StreamId family/key rule, split at the first ':'."""
    assert StreamId("test:float").family == "test"
    rid = RunId.new_v4()
    run_stream = StreamId.for_run(rid)
    assert run_stream == f"run:{rid}"
    assert (run_stream.family, run_stream.key) == ("run", str(rid))
    nested = StreamId("fam:a:b")
    assert (nested.family, nested.key) == ("fam", "a:b")


@pytest.mark.parametrize(
    "value", ["Run:x", "test:", "test:a b", "noseparator", ":key", "test:a\tb", "test:a\x01", "t-x:k"]
)
def test_a6_stream_id_rejects(value: str) -> None:
    with pytest.raises(IdValidationError) as info:
        StreamId(value)
    assert info.value.kind == "stream_id"


def test_a6_stream_id_rejects_unicode_whitespace() -> None:
    with pytest.raises(IdValidationError):
        StreamId("test:a\u00a0b")
    with pytest.raises(IdValidationError):
        StreamId("test:a\u2028b")


# -- the remaining ids (supporting A) ---------------------------------------------------------


def test_run_id_is_lowercase_hyphenated_uuid() -> None:
    rid = RunId.new_v4()
    assert rid == str(rid.uuid) and rid.uuid.version == 4
    assert RunId.from_uuid(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    with pytest.raises(IdValidationError):
        RunId(str(rid).upper())
    with pytest.raises(IdValidationError):
        RunId("not-a-uuid")


def test_free_form_keys_are_not_validated() -> None:
    for cls in (FactKey, ContextKey, ErrorCode):
        assert cls("Any String: with spaces.and.dots") == "Any String: with spaces.and.dots"
        assert cls("") == ""


def test_context_key_explicit_slot() -> None:
    assert ContextKey("in.x").explicit_slot == ("in", "x")
    assert ContextKey("out.a.b").explicit_slot == ("out", "a.b")
    assert ContextKey("work.y").explicit_slot == ("work", "y")
    assert ContextKey("in.").explicit_slot is None
    assert ContextKey("inx.y").explicit_slot is None
    assert ContextKey("x").explicit_slot is None


def test_id_error_message_truncates_huge_values() -> None:
    with pytest.raises(IdValidationError) as info:
        OpId("X" * 10_000)
    assert len(str(info.value)) < 300
