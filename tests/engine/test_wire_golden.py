"""Golden wire-format files (ENGINE-SPEC §0.2, §4.4).

Every file under ``tests/data/`` was written by hand from the seed's serde derives (compact
serde_json output: fields in declaration order, externally tagged enums, unit variants as strings,
``Duration`` as ``{"secs","nanos"}``, ``None`` as ``null``, no trailing newline). ``serde_json::Value``
positions (payloads, details, input_params, meta) hold objects with sorted keys, which is what
serde_json's default ``BTreeMap``-backed map produces.

Each file must decode into our models and re-encode to exactly the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from engine._kinds import ArtifactKind
from engine._wire import Variant, compact_json
from engine.config import (
    ContextCheckpointing,
    Duration,
    EventProfile,
    Exponential,
    FanOutJoin,
    Fixed,
    IoMode,
    RetryPolicy,
    RunConfig,
    RunManifest,
    Sequential,
)
from engine.engine import RunPhase, RunResult
from engine.errors import ErrorCategory, ErrorInfo, StateError, StorageError, StorageErrorKind
from engine.events import (
    ArtifactWritten,
    ChildRunCompleted,
    ChildRunSpawned,
    DomainEvent,
    EventEnvelope,
    FactRecorded,
    KernelEvent,
    OpBoundary,
    RetryScheduled,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
    decode_envelope,
    encode_envelope,
)
from engine.hashing import canonical_json_bytes
from engine.ids import ArtifactId, OpId, RunId, StateId
from engine.io import IoCall, IoResult
from engine.meta import DependencyStrategy, Idempotency, SideEffectKind, StateMeta
from engine.stores import encode_batch
from engine.testing import base_config, make_manifest

DATA = Path(__file__).resolve().parent.parent / "data"

H1 = ArtifactId("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
H2 = ArtifactId("44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
H3 = ArtifactId("94a786c3662bc7beeb598efa7d8cb58d7bea25d6c275ea9785a0230ff1f8c2ba")
H4 = ArtifactId("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
RUN = RunId("0b7f3c1e-9a2d-4e5f-8a6b-1c2d3e4f5a6b")
CHILD = RunId("6f1e2d3c-4b5a-5968-8776-a5b4c3d2e1f0")

KERNEL: TypeAdapter[Any] = TypeAdapter(KernelEvent)


def _adapter(prefix: str) -> TypeAdapter[Any]:
    table: dict[str, Any] = {
        "kernel_": KernelEvent,
        "domain_event": DomainEvent,
        "envelope_": EventEnvelope,
        "run_config_": RunConfig,
        "run_manifest": RunManifest,
        "error_info": ErrorInfo,
        "state_error": StateError,
        "artifact_kinds": list[ArtifactKind],
        "payload_fact_recorded": FactRecorded,
        "payload_artifact_written": ArtifactWritten,
        "payload_op_boundary": OpBoundary,
        "payload_child_run_spawned": ChildRunSpawned,
        "payload_child_run_completed": ChildRunCompleted,
        "payload_retry_scheduled": RetryScheduled,
        "state_meta": StateMeta,
        "run_result": RunResult,
    }
    for key, tp in table.items():
        if prefix.startswith(key):
            return TypeAdapter(tp)
    raise AssertionError(f"no type registered for golden file {prefix}")


ALL_FILES = sorted(p.name for p in DATA.glob("*.json"))
# Files that decode to a *different* canonical encoding on purpose (default filled in on decode).
NOT_ROUND_TRIP = {"run_config_no_allowlist.json"}
ROUND_TRIP = [f for f in ALL_FILES if f not in NOT_ROUND_TRIP]


def _golden(name: str) -> bytes:
    return (DATA / name).read_bytes()


def _reencode(adapter: TypeAdapter[Any], value: Any) -> bytes:
    # A model's own model_dump is the wire form, except for enum variants (Variant subclasses),
    # whose tag is added by the union's serializer.
    if isinstance(value, BaseModel) and not isinstance(value, Variant):
        return compact_json(value.model_dump(mode="json")).encode("utf-8")
    return compact_json(adapter.dump_python(value, mode="json")).encode("utf-8")


def test_golden_set_is_complete() -> None:
    """Every wire type the brief names has at least one golden file."""
    prefixes = [
        "kernel_run_started",
        "kernel_state_entered",
        "kernel_state_completed",
        "kernel_state_failed_plain",
        "kernel_state_failed_details",
        "kernel_run_completed_completed",
        "kernel_run_completed_failed",
        "kernel_run_completed_cancelled",
        "domain_event",
        "domain_event_payload_ref",
        "envelope_kernel_ts_null",
        "envelope_kernel_ts_set",
        "envelope_domain_ts_null",
        "envelope_domain_ts_set",
        "envelope_domain_sorted_payload",
        "envelope_kernel_failed_sorted_details",
        "run_config_fixed",
        "run_config_exponential",
        "run_config_no_allowlist",
        "run_config_custom_profile",
        "run_config_verbose",
        "run_manifest",
        "error_info",
        "state_error",
        "artifact_kinds",
        "payload_fact_recorded",
        "payload_artifact_written",
        "payload_op_boundary",
        "payload_child_run_spawned",
        "payload_child_run_completed",
        "payload_retry_scheduled",
    ]
    missing = [p for p in prefixes if f"{p}.json" not in ALL_FILES]
    assert missing == []


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_golden_round_trip_from_json_bytes(name: str) -> None:
    raw = _golden(name)
    assert not raw.endswith(b"\n"), "serde_json::to_string output has no trailing newline"
    adapter = _adapter(name)
    value = adapter.validate_json(raw)
    assert _reencode(adapter, value) == raw


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_golden_round_trip_from_python_value(name: str) -> None:
    """The same through ``json.loads`` + python-mode validation (what the stores do)."""
    raw = _golden(name)
    adapter = _adapter(name)
    value = adapter.validate_python(json.loads(raw))
    assert _reencode(adapter, value) == raw


@pytest.mark.parametrize("name", [f for f in ROUND_TRIP if f.startswith("envelope_")])
def test_golden_envelopes_through_store_codec(name: str) -> None:
    raw = _golden(name)
    env = decode_envelope(raw)
    assert encode_envelope(env) == raw
    assert env.to_json().encode("utf-8") == raw
    assert env.run_id == RUN


def test_run_config_without_allowlist_decodes_with_default() -> None:
    cfg = RunConfig.model_validate_json(_golden("run_config_no_allowlist.json"))
    assert cfg.nix_flake_allowlist == ("github:willyrgf/mfm",)
    assert _reencode(TypeAdapter(RunConfig), cfg) == _golden("run_config_fixed.json")


# -- constructed in Python: our constructors and defaults produce the seed's bytes ---------------


def _encode_model(model: Any) -> bytes:
    return compact_json(model.model_dump(mode="json")).encode("utf-8")


def test_constructed_base_config_matches_golden() -> None:
    assert _encode_model(base_config()) == _golden("run_config_fixed.json")


def test_constructed_conformance_manifest_matches_golden() -> None:
    assert _encode_model(make_manifest(base_config())) == _golden("run_manifest_conformance.json")


def test_constructed_exponential_config_matches_golden() -> None:
    cfg = RunConfig(
        io_mode=IoMode.REPLAY,
        retry_policy=RetryPolicy(
            max_attempts=5,
            backoff=Exponential(base_delay=Duration.from_millis(250), max_delay=Duration.from_secs(30)),
        ),
        event_profile=EventProfile.NORMAL,
        execution_mode=FanOutJoin(max_concurrency=4),
        context_checkpointing=ContextCheckpointing.custom("every_3_states"),
        replay_missing_fact_retryable=True,
        skip_tags=("apply_side_effect", "impure"),
        nix_flake_allowlist=("github:willyrgf/mfm", "github:example/flakes"),
    )
    assert _encode_model(cfg) == _golden("run_config_exponential.json")
    assert RunConfig.model_validate_json(_golden("run_config_exponential.json")) == cfg


def test_constructed_kernel_events_match_golden() -> None:
    cases: list[tuple[Any, str]] = [
        (
            RunStarted(op_id=OpId("portfolio_snapshot"), manifest_id=H3, initial_snapshot_id=H2),
            "kernel_run_started.json",
        ),
        (
            StateEntered(
                state_id=StateId("portfolio_snapshot.fetch_balances.read_eth"), attempt=0, base_snapshot_id=H2
            ),
            "kernel_state_entered.json",
        ),
        (StateCompleted(state_id=StateId("machine.main.s1"), context_snapshot_id=H1), "kernel_state_completed.json"),
        (
            StateFailed(
                state_id=StateId("machine.main.s1"),
                error=StateError.new("flaky", "flaky failure", retryable=True, state_id=StateId("machine.main.s1")),
            ),
            "kernel_state_failed_plain.json",
        ),
        (
            StateFailed(
                state_id=StateId("machine.main.s2"),
                error=StateError.new(
                    "rpc_timeout",
                    "upstream timed out after 3 tries",
                    category=ErrorCategory.RPC,
                    details={
                        "attempts": [1, 2, 3],
                        "endpoint": "eth_getBalance",
                        "nested": {"ok": False, "value": None},
                    },
                ),
                failure_snapshot_id=H4,
            ),
            "kernel_state_failed_details.json",
        ),
        (RunCompleted(status=RunStatus.COMPLETED, final_snapshot_id=H1), "kernel_run_completed_completed.json"),
        (RunCompleted(status=RunStatus.FAILED, final_snapshot_id=H2), "kernel_run_completed_failed.json"),
        (RunCompleted(status=RunStatus.CANCELLED), "kernel_run_completed_cancelled.json"),
    ]
    for event, name in cases:
        assert _reencode(KERNEL, event) == _golden(name), name
        assert KERNEL.validate_json(_golden(name)) == event, name


def test_constructed_envelopes_match_golden() -> None:
    env = EventEnvelope(
        run_id=RUN,
        seq=2,
        ts_millis=1764165600123,
        event=StateEntered(state_id=StateId("machine.main.s1"), attempt=0, base_snapshot_id=H2),
    )
    assert encode_envelope(env) == _golden("envelope_kernel_ts_set.json")
    # The Rust runtime builds the payload with serde_json::to_value(FactRecorded{..}): a Value whose
    # map (BTreeMap, serde_json's default) sorts keys. Our model dumps fields in declaration order, so
    # a byte-identical payload is the canonical (sorted) form of that dump.
    payload = json.loads(canonical_json_bytes(FactRecorded(key="k", payload_id=H1).model_dump(mode="json")))
    assert list(payload) == ["key", "meta", "payload_id"]
    dom = EventEnvelope(run_id=RUN, seq=4, event=DomainEvent(name="fact_recorded", payload=payload))
    assert encode_envelope(dom) == _golden("envelope_domain_ts_null.json")


# -- serde_json::Value positions: keys sorted by code point, at every level ----------------------------------------
# serde_json's Value holds objects in a BTreeMap<String, Value>: keys compare as UTF-8 bytes (= code points), not as
# UTF-16 code units (RFC 8785). The two golden files below were written by hand in that order; the Python values
# below list the same keys in a deliberately different order.

UNSORTED_PAYLOAD: dict[str, Any] = {
    "\U0001f600": "U+1F600: after U+E000 (UTF-16 order puts it first)",
    "zeta": 1,
    "b": {"y": [{"d": 4, "c": 3}], "x": None},
    "a\U00010000": "U+10000: after U+FFFF (UTF-16 order puts it first)",
    "\ue000": "U+E000",
    "a": [3, {"2": True, "10": False}],
    "\u00e9": "U+00E9",
    "a\uffff": "U+FFFF",
    "Z": "upper case before lower",
    "": "empty key first",
}
UNSORTED_DETAILS: dict[str, Any] = {
    "nested": {"b": {"z": False, "y": None}, "a": []},
    "endpoint": "eth_getBalance",
    "attempts": [{"try": 1, "ms": 30000}, {"try": 2, "ms": 30000}],
}


def _key_lists(value: Any) -> list[list[str]]:
    """The keys of every object in ``value`` (as ``json.loads`` read them: in file order), depth first."""
    if isinstance(value, dict):
        return [list(value), *(keys for v in value.values() for keys in _key_lists(v))]
    if isinstance(value, list):
        return [keys for v in value for keys in _key_lists(v)]
    return []


def test_sorted_golden_values_are_in_utf8_byte_order() -> None:
    """Independent of our encoder: every object inside the payload and the details lists its keys in UTF-8 order."""
    payload = json.loads(_golden("envelope_domain_sorted_payload.json"))["event"]["Domain"]["payload"]
    failed = json.loads(_golden("envelope_kernel_failed_sorted_details.json"))["event"]["Kernel"]["StateFailed"]
    key_lists = _key_lists(payload) + _key_lists(failed["error"]["info"]["details"])
    assert len(key_lists) == 9
    for keys in key_lists:
        assert keys == sorted(keys, key=lambda k: k.encode("utf-8"))


def test_payload_golden_covers_code_point_versus_utf16_order() -> None:
    """The payload golden orders keys where code-point order and RFC 8785's UTF-16 order disagree."""
    keys = list(json.loads(_golden("envelope_domain_sorted_payload.json"))["event"]["Domain"]["payload"])
    utf16 = sorted(keys, key=lambda k: k.encode("utf-16-be"))
    assert keys == sorted(keys) != utf16
    assert keys.index("\ue000") < keys.index("\U0001f600") and utf16.index("\U0001f600") < utf16.index("\ue000")
    assert keys.index("a\uffff") < keys.index("a\U00010000")


def test_unsorted_payload_is_written_like_serde_json() -> None:
    """``DomainEvent(payload={"b":1,"a":2})`` is written ``{"a":2,"b":1}``, at every nesting level."""
    env = EventEnvelope(
        run_id=RUN,
        seq=7,
        ts_millis=1764165600789,
        event=DomainEvent(name="sorted_payload", payload=UNSORTED_PAYLOAD),
    )
    golden = _golden("envelope_domain_sorted_payload.json")
    assert encode_envelope(env) == golden
    assert encode_batch(RUN, 6, [env]) == [golden]  # the stores' codec
    assert (
        _encode_model(DomainEvent(name="n", payload={"b": 1, "a": 2}))
        == b'{"name":"n","payload":{"a":2,"b":1},"payload_ref":null}'
    )


def test_unsorted_error_details_are_written_like_serde_json() -> None:
    error = StateError.new(
        "rpc_timeout",
        "upstream timed out",
        category=ErrorCategory.RPC,
        retryable=True,
        state_id=StateId("machine.main.s2"),
        details=UNSORTED_DETAILS,
    )
    env = EventEnvelope(
        run_id=RUN,
        seq=5,
        ts_millis=1764165600500,
        event=StateFailed(state_id=StateId("machine.main.s2"), error=error),
    )
    golden = _golden("envelope_kernel_failed_sorted_details.json")
    assert encode_envelope(env) == golden
    assert encode_batch(RUN, 4, [env]) == [golden]
    assert _encode_model(error.info).endswith(
        b'"details":{"attempts":[{"ms":30000,"try":1},{"ms":30000,"try":2}],'
        b'"endpoint":"eth_getBalance","nested":{"a":[],"b":{"y":null,"z":false}}}}'
    )


def test_other_value_positions_are_written_sorted() -> None:
    """input_params, fact / artifact meta and IO requests / responses are serde_json Values too."""
    manifest = make_manifest(base_config(), input_params={"b": [{"d": 1, "c": 2}], "a": 0})
    assert b'"input_params":{"a":0,"b":[{"c":2,"d":1}]}' in _encode_model(manifest)
    fact = FactRecorded(key="k", payload_id=H1, meta={"z": 1, "a": {"y": 2, "x": 3}})
    assert _encode_model(fact).endswith(b'"meta":{"a":{"x":3,"y":2},"z":1}}')
    written = ArtifactWritten(artifact_id=H1, kind=ArtifactKind.OUTPUT, meta={"z": 1, "a": 2})
    assert _encode_model(written).endswith(b'"meta":{"a":2,"z":1}}')
    call = IoCall(namespace="http", request={"url": "u", "method": "GET", "headers": {"b": "1", "a": "2"}})
    assert (
        _encode_model(call)
        == b'{"namespace":"http","request":{"headers":{"a":"2","b":"1"},"method":"GET","url":"u"},"fact_key":null}'
    )
    result = IoResult(response={"b": 1, "a": 2})
    assert _encode_model(result) == b'{"response":{"a":2,"b":1},"recorded_payload_id":null}'


def test_constructed_payloads_match_golden() -> None:
    cases: list[tuple[Any, str]] = [
        (
            FactRecorded(
                key="coingecko:price:btc", payload_id=H1, meta={"namespace": "http", "recorded_at_attempt": 0}
            ),
            "payload_fact_recorded.json",
        ),
        (ArtifactWritten(artifact_id=H2, kind=ArtifactKind.OUTPUT), "payload_artifact_written.json"),
        (
            ArtifactWritten(artifact_id=H3, kind=ArtifactKind.other("report_html"), meta={"title": "Weekly"}),
            "payload_artifact_written_other.json",
        ),
        (
            OpBoundary(op_path="portfolio_snapshot.fetch_balances.reporting", phase="started"),
            "payload_op_boundary.json",
        ),
        (
            ChildRunSpawned(parent_run_id=RUN, child_run_id=CHILD, child_manifest_id=H3),
            "payload_child_run_spawned.json",
        ),
        (
            ChildRunCompleted(child_run_id=CHILD, status=RunStatus.COMPLETED, final_snapshot_id=H1),
            "payload_child_run_completed.json",
        ),
        (ChildRunCompleted(child_run_id=CHILD, status=RunStatus.FAILED), "payload_child_run_completed_failed.json"),
        (
            RetryScheduled(
                state_id=StateId("machine.main.s1"),
                failed_attempt=0,
                next_attempt=1,
                delay_ms=250,
                not_before_millis=1764165600706,
            ),
            "payload_retry_scheduled.json",
        ),
        (
            StateMeta(
                tags=("fetch_data", "apply_side_effect"),
                depends_on=("config",),
                depends_on_strategy=DependencyStrategy.LATEST_SUCCESSFUL,
                side_effects=SideEffectKind.APPLY_SIDE_EFFECT,
                idempotency=Idempotency.key("tx:intent:abc"),
            ),
            "state_meta.json",
        ),
        (StateMeta(), "state_meta_pure.json"),
        (RunResult(run_id=RUN, phase=RunPhase.RUNNING), "run_result.json"),
        (
            ErrorInfo.new(
                "missing_fact_key", "deterministic IO call requires a fact key", category=ErrorCategory.PARSING_INPUT
            ),
            "error_info.json",
        ),
    ]
    for model, name in cases:
        assert _encode_model(model) == _golden(name), name


def test_artifact_kinds_decode_to_every_kind() -> None:
    kinds = TypeAdapter(list[ArtifactKind]).validate_json(_golden("artifact_kinds.json"))
    assert kinds == [
        ArtifactKind.MANIFEST,
        ArtifactKind.CONTEXT_SNAPSHOT,
        ArtifactKind.FACT_PAYLOAD,
        ArtifactKind.SECRET_PAYLOAD,
        ArtifactKind.OUTPUT,
        ArtifactKind.other("report_html"),
    ]


def test_decoded_values_have_the_python_shape() -> None:
    failed = KERNEL.validate_json(_golden("kernel_state_failed_details.json"))
    assert isinstance(failed, StateFailed)
    assert failed.error.state_id is None
    assert failed.error.info.category is ErrorCategory.RPC
    assert failed.failure_snapshot_id == H4
    cfg = RunConfig.model_validate_json(_golden("run_config_custom_profile.json"))
    assert cfg.event_profile == EventProfile.custom("audit_trail")
    assert cfg.context_checkpointing == ContextCheckpointing.custom("")
    assert isinstance(cfg.retry_policy.backoff, Exponential)
    assert cfg.retry_policy.backoff.max_delay == Duration(secs=2**64 - 1, nanos=999_999_999)
    assert isinstance(cfg.execution_mode, Sequential)
    verbose = RunConfig.model_validate_json(_golden("run_config_verbose.json"))
    assert verbose.event_profile == EventProfile.VERBOSE
    assert verbose.execution_mode == FanOutJoin(max_concurrency=1)
    assert verbose.retry_policy.backoff == Fixed(delay=Duration(secs=2, nanos=500))
    assert verbose.nix_flake_allowlist == ()
    env = EventEnvelope.model_validate_json(_golden("envelope_domain_ts_set.json"))
    assert env.seq == 2**64 - 1 and env.ts_millis == 0 and not env.is_kernel and env.kind == "retry_scheduled"
    dom = DomainEvent.model_validate_json(_golden("domain_event.json"))
    assert isinstance(dom.payload, dict)
    assert dom.payload["text"] == "café ✓\x7f\u2028"
    assert dom.payload["ctrl"] == "tab\there\x1f"


# -- malformed input is rejected ---------------------------------------------------------------


def _mutate(name: str, old: str, new: str) -> bytes:
    raw = _golden(name).decode("utf-8")
    assert old in raw, (name, old)
    return raw.replace(old, new, 1).encode("utf-8")


MALFORMED: list[tuple[str, str, str, str]] = [
    # (id, golden file, old, new)
    ("kernel_unknown_tag", "kernel_run_started.json", '{"RunStarted":', '{"RunPaused":'),
    ("kernel_wrong_case_tag", "kernel_run_started.json", '{"RunStarted":', '{"runStarted":'),
    (
        "kernel_two_keys",
        "kernel_run_completed_cancelled.json",
        '"final_snapshot_id":null}}',
        '"final_snapshot_id":null},"RunStarted":{}}',
    ),
    (
        "kernel_as_string",
        "kernel_run_completed_cancelled.json",
        '{"RunCompleted":{"status":"Cancelled","final_snapshot_id":null}}',
        '"RunCompleted"',
    ),
    ("status_wrong_case", "kernel_run_completed_cancelled.json", '"Cancelled"', '"cancelled"'),
    ("status_unknown", "kernel_run_completed_cancelled.json", '"Cancelled"', '"Aborted"'),
    ("attempt_negative", "kernel_state_entered.json", '"attempt":0', '"attempt":-1'),
    ("attempt_u32_overflow", "kernel_state_entered.json", '"attempt":0', '"attempt":4294967296'),
    ("attempt_string", "kernel_state_entered.json", '"attempt":0', '"attempt":"0"'),
    ("attempt_float", "kernel_state_entered.json", '"attempt":0', '"attempt":0.0'),
    ("attempt_bool", "kernel_state_entered.json", '"attempt":0', '"attempt":false'),
    ("state_id_two_parts", "kernel_state_entered.json", "portfolio_snapshot.fetch_balances.read_eth", "machine.main"),
    ("artifact_id_uppercase", "kernel_state_completed.json", "2cf24dba", "2CF24DBA"),
    ("missing_field", "kernel_state_completed.json", ',"context_snapshot_id":"' + H1 + '"', ""),
    ("retryable_string", "error_info.json", '"retryable":false', '"retryable":"false"'),
    ("retryable_int", "error_info.json", '"retryable":false', '"retryable":0'),
    ("category_wrong_case", "error_info.json", '"ParsingInput"', '"parsing_input"'),
    ("state_error_extra_key", "state_error.json", '{"state_id":', '{"extra":1,"state_id":'),
    ("io_mode_wrong_case", "run_config_fixed.json", '"Live"', '"live"'),
    ("profile_wrong_case", "run_config_fixed.json", '"Minimal"', '"minimal"'),
    ("profile_custom_as_string", "run_config_fixed.json", '"Minimal"', '"Custom"'),
    (
        "profile_custom_wrong_case",
        "run_config_custom_profile.json",
        '{"Custom":"audit_trail"}',
        '{"custom":"audit_trail"}',
    ),
    ("profile_two_keys", "run_config_custom_profile.json", '{"Custom":"audit_trail"}', '{"Custom":"a","Minimal":"b"}'),
    ("mode_wrong_case", "run_config_fixed.json", '"Sequential"', '"sequential"'),
    ("mode_unit_as_object", "run_config_fixed.json", '"Sequential"', '{"Sequential":{}}'),
    ("mode_struct_missing_field", "run_config_exponential.json", '{"max_concurrency":4}', "{}"),
    ("mode_struct_as_string", "run_config_exponential.json", '{"FanOutJoin":{"max_concurrency":4}}', '"FanOutJoin"'),
    ("backoff_unknown", "run_config_fixed.json", '{"Fixed":', '{"Linear":'),
    (
        "backoff_two_keys",
        "run_config_fixed.json",
        '{"Fixed":{"delay":{"secs":0,"nanos":0}}}',
        '{"Fixed":{"delay":{"secs":0,"nanos":0}},"Exponential":{}}',
    ),
    ("duration_missing_nanos", "run_config_fixed.json", '{"secs":0,"nanos":0}', '{"secs":0}'),
    ("duration_millis_int", "run_config_fixed.json", '{"secs":0,"nanos":0}', "0"),
    ("duration_negative", "run_config_fixed.json", '{"secs":0,"nanos":0}', '{"secs":-1,"nanos":0}'),
    ("duration_secs_string", "run_config_fixed.json", '{"secs":0,"nanos":0}', '{"secs":"0","nanos":0}'),
    ("max_attempts_float", "run_config_fixed.json", '"max_attempts":3', '"max_attempts":3.0'),
    ("checkpointing_wrong_case", "run_config_fixed.json", '"AfterEveryState"', '"after_every_state"'),
    (
        "replay_retryable_int",
        "run_config_fixed.json",
        '"replay_missing_fact_retryable":false',
        '"replay_missing_fact_retryable":0',
    ),
    ("skip_tags_not_list", "run_config_fixed.json", '"skip_tags":[]', '"skip_tags":"report"'),
    ("manifest_op_id_invalid", "run_manifest.json", '"op_id":"portfolio_snapshot"', '"op_id":"bad-op"'),
    ("artifact_kind_wrong_case", "payload_artifact_written.json", '"Output"', '"output"'),
    ("artifact_kind_other_unit", "payload_artifact_written.json", '"Output"', '"Other"'),
    ("artifact_kind_unknown_newtype", "payload_artifact_written_other.json", '{"Other":', '{"Custom":'),
    ("idempotency_key_as_string", "state_meta.json", '{"Key":"tx:intent:abc"}', '"Key"'),
    ("side_effects_wrong_case", "state_meta.json", '"ApplySideEffect"', '"apply_side_effect"'),
    ("run_result_phase_wrong_case", "run_result.json", '"Running"', '"running"'),
    (
        "op_boundary_bad_path",
        "payload_op_boundary.json",
        "portfolio_snapshot.fetch_balances.reporting",
        "portfolio_snapshot",
    ),
    ("child_run_id_not_uuid", "payload_child_run_spawned.json", '"child_run_id":"6f1e', '"child_run_id":"xf1e'),
    ("retry_scheduled_string", "payload_retry_scheduled.json", '"delay_ms":250', '"delay_ms":"250"'),
]


@pytest.mark.parametrize(("case", "name", "old", "new"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_is_rejected(case: str, name: str, old: str, new: str) -> None:
    raw = _mutate(name, old, new)
    adapter = _adapter(name)
    with pytest.raises(ValidationError):
        adapter.validate_json(raw)
    with pytest.raises(ValidationError):
        adapter.validate_python(json.loads(raw))


ENVELOPE_MALFORMED: list[tuple[str, str, str, str]] = [
    ("event_unknown_tag", "envelope_kernel_ts_null.json", '{"Kernel":', '{"Machine":'),
    ("event_wrong_case", "envelope_kernel_ts_null.json", '{"Kernel":', '{"kernel":'),
    ("event_two_keys", "envelope_domain_ts_null.json", '"payload_ref":null}}', '"payload_ref":null},"Kernel":{}}'),
    ("seq_zero", "envelope_kernel_ts_null.json", '"seq":1,', '"seq":0,'),
    ("seq_string", "envelope_kernel_ts_null.json", '"seq":1,', '"seq":"1",'),
    ("seq_bool", "envelope_kernel_ts_null.json", '"seq":1,', '"seq":true,'),
    ("seq_float", "envelope_kernel_ts_null.json", '"seq":1,', '"seq":1.0,'),
    ("seq_u64_overflow", "envelope_domain_ts_set.json", '"seq":18446744073709551615', '"seq":18446744073709551616'),
    ("ts_negative", "envelope_kernel_ts_set.json", '"ts_millis":1764165600123', '"ts_millis":-1'),
    ("ts_string", "envelope_kernel_ts_set.json", '"ts_millis":1764165600123', '"ts_millis":"1764165600123"'),
    ("run_id_uppercase", "envelope_kernel_ts_null.json", "0b7f3c1e-9a2d", "0B7F3C1E-9A2D"),
    (
        "run_id_simple_form",
        "envelope_kernel_ts_null.json",
        "0b7f3c1e-9a2d-4e5f-8a6b-1c2d3e4f5a6b",
        "0b7f3c1e9a2d4e5f8a6b1c2d3e4f5a6b",
    ),
    ("kernel_domain_shape", "envelope_domain_ts_null.json", '{"Domain":', '{"Kernel":'),
    ("domain_missing_name", "envelope_domain_ts_null.json", '"name":"fact_recorded",', ""),
]


@pytest.mark.parametrize(("case", "name", "old", "new"), ENVELOPE_MALFORMED, ids=[m[0] for m in ENVELOPE_MALFORMED])
def test_malformed_envelope_is_corruption(case: str, name: str, old: str, new: str) -> None:
    raw = _mutate(name, old, new)
    with pytest.raises(ValidationError):
        EventEnvelope.model_validate_json(raw)
    with pytest.raises(StorageError) as info:
        decode_envelope(raw)
    assert info.value.kind is StorageErrorKind.CORRUPTION
    assert info.value.code == "machine_event_decode_failed"


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b"null", b'{"run_id":1}', b"\xff\xfe"])
def test_garbage_envelope_is_corruption(raw: bytes) -> None:
    with pytest.raises(StorageError) as info:
        decode_envelope(raw)
    assert info.value.code == "machine_event_decode_failed"
