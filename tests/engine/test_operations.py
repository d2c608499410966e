"""Operation registry, parameter parsing, manifest building and the demo operations (in memory)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from engine.artifacts import read_canonical_json
from engine.engine import RunPhase
from engine.events import ArtifactWritten, DomainEvent, StateFailed
from engine.exec_transport import ExecTransportFactory
from engine.ids import OpId, RunId
from engine.operations import (
    Operation,
    OperationEnv,
    OperationError,
    OperationRegistry,
    load_registry,
    load_start_run,
    parse_param_assignments,
    parse_params_json,
    prepare_run,
    read_manifest,
)
from engine.runtime import Engine, Failpoints
from engine.stores import MemoryStore
from engine.testing import base_config, make_plan


class _P(BaseModel):
    name: str = "x"
    count: int = 1
    words: list[str] = []


class _Noop:
    def meta(self) -> Any:
        from engine.meta import StateMeta

        return StateMeta()

    async def handle(self, ctx: Any, io: Any, rec: Any) -> Any:
        from engine.state import StateOutcome

        ctx.write("count", 1)
        return StateOutcome()


def _op(op_id: str = "toy", version: str = "1") -> Operation:
    return Operation(
        op_id=OpId(op_id),
        version=version,
        description="A toy.\nMore text.",
        params_model=_P,
        build_plan=lambda p, env: make_plan([("a", _Noop())], op_id=op_id),
        run_config=base_config(),
        initial_context=lambda p: {"name": p.name},
    )


def test_registry_get_latest_and_by_version() -> None:
    v1, v2 = _op(version="1"), _op(version="2")
    reg = OperationRegistry([v1, v2])
    assert reg.get("toy") is v2
    assert reg.get("toy", "1") is v1
    assert reg.operations() == [v2]
    assert v1.summary == "A toy."


def test_registry_errors_have_stable_codes() -> None:
    reg = OperationRegistry([_op()])
    with pytest.raises(OperationError) as e1:
        reg.get("nope")
    assert e1.value.code == "unknown_operation" and "toy" in e1.value.message
    with pytest.raises(OperationError) as e2:
        reg.get("toy", "9")
    assert e2.value.code == "operation_version_unknown"
    with pytest.raises(OperationError) as e3:
        reg.register(_op())
    assert e3.value.code == "duplicate_operation"


def test_same_operation_object_twice_is_harmless() -> None:
    op = _op()
    reg = OperationRegistry([op, op])
    assert reg.operations() == [op]


def test_invalid_params_name_each_field() -> None:
    with pytest.raises(OperationError) as err:
        _op().validate_params({"count": "many", "words": 3, "extra_is_ignored": 1})
    assert err.value.code == "invalid_params"
    assert "count:" in err.value.message and "words:" in err.value.message
    fields = {e["field"] for e in err.value.info.details["errors"]}  # type: ignore[index,union-attr]
    assert fields == {"count", "words"}


@pytest.mark.parametrize("raw", [{"count": -0.0}, {"count": 2.0}, {"words": ["a", 1.5]}])
def test_float_params_are_refused(raw: dict[str, Any]) -> None:
    """Parameters are canonical JSON: no floats, not even ``2.0`` or ``-0`` that the model would turn into ints."""
    with pytest.raises(OperationError) as err:
        _op().validate_params(raw)
    assert err.value.code == "invalid_params"
    assert "floats are not allowed" in err.value.message


def test_negative_zero_params_are_floats() -> None:
    op = _op()
    raw = parse_param_assignments(op, ["count=-0"])
    assert repr(raw["count"]) == "-0.0"  # today: 0
    with pytest.raises(OperationError) as err:
        op.validate_params(raw)
    assert err.value.message == (
        "invalid parameters for toy: count: floats are not allowed, got -0.0 "
        "(-0 is read as a float, as serde_json reads it; write 0)"
    )
    assert repr(parse_params_json('{"count": -0, "name": "-0"}')) == "{'count': -0.0, 'name': '-0'}"
    assert op.validate_params(parse_param_assignments(op, ["count=0"])).model_dump()["count"] == 0


def test_parse_param_assignments() -> None:
    op = _op()
    raw = parse_param_assignments(op, ["name=123", "count=7", "words=a, b,c"])
    assert raw == {"name": "123", "count": 7, "words": ["a", "b", "c"]}
    assert parse_param_assignments(op, ['words=["x","y"]'])["words"] == ["x", "y"]
    with pytest.raises(OperationError) as err:
        parse_param_assignments(op, ["novalue"])
    assert err.value.code == "invalid_params"


async def test_prepare_run_stores_canonical_manifest_with_validated_params() -> None:
    mem = MemoryStore()
    reg = OperationRegistry([_op()])
    prepared = await prepare_run(mem.stores, reg, "toy", {"count": "3"}, run_id=RunId.new_v4())
    value = await read_canonical_json(mem.artifacts, prepared.manifest_id)
    assert value["input_params"] == {"name": "x", "count": 3, "words": []}
    assert value["op_id"] == "toy" and value["op_version"] == "1"
    manifest = await read_manifest(mem.artifacts, prepared.manifest_id)
    assert manifest == prepared.manifest
    start = await load_start_run(mem.stores, reg, prepared.manifest_id)
    assert start.run_config == base_config()
    assert start.initial_context.dump() == {"name": "x"}
    assert [n.id for n in start.plan.graph.states] == ["machine.main.a"]


async def test_invalid_input_writes_nothing() -> None:
    mem = MemoryStore()
    reg = OperationRegistry([_op()])
    with pytest.raises(OperationError):
        await prepare_run(mem.stores, reg, "toy", {"count": "x"}, run_id=RunId.new_v4())
    with pytest.raises(OperationError):
        await prepare_run(mem.stores, reg, "nope", {}, run_id=RunId.new_v4())
    assert mem.artifacts.all_bytes() == []


async def test_secret_params_are_refused_before_writing() -> None:
    mem = MemoryStore()
    reg = OperationRegistry([_op()])
    with pytest.raises(OperationError) as err:
        await prepare_run(mem.stores, reg, "toy", {"name": "my password is hunter2"}, run_id=RunId.new_v4())
    assert err.value.code == "secrets_detected"
    assert mem.artifacts.all_bytes() == []


def test_plan_resolver_rebuilds_from_manifest_and_revalidates() -> None:
    reg = OperationRegistry([_op()])
    from engine.operations import build_manifest

    op = reg.get("toy")
    manifest = build_manifest(op, op.validate_params({}))
    plan = reg.plan_resolver()(manifest)
    assert plan.op_id == "toy"
    bad = manifest.model_copy(update={"input_params": {"count": "zz"}})
    with pytest.raises(OperationError) as err:
        reg.plan_for(bad)
    assert err.value.code == "invalid_params"


def test_load_registry_from_module_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_ops_mod.py").write_text(
        textwrap.dedent(
            """
            from engine.demo_ops import DEMO_BIG
            OPERATIONS = [DEMO_BIG]
            """
        )
    )
    (tmp_path / "no_ops_mod.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = load_registry(["my_ops_mod"], entry_points=False)
    assert [o.op_id for o in reg.operations()] == ["demo_big"]
    with pytest.raises(OperationError) as e1:
        load_registry(["does_not_exist_mod"], entry_points=False)
    assert e1.value.code == "ops_module_import_failed"
    with pytest.raises(OperationError) as e2:
        load_registry(["no_ops_mod"], entry_points=False)
    assert e2.value.code == "ops_module_invalid"
    sys.modules.pop("my_ops_mod", None)
    sys.modules.pop("no_ops_mod", None)


def test_entry_points_are_loaded_and_broken_ones_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    good = metadata.EntryPoint(name="demo", value="engine.demo_ops:OPERATIONS", group="mfm.operations")
    bad = metadata.EntryPoint(name="broken", value="engine.demo_ops:NOPE", group="mfm.operations")
    monkeypatch.setattr(metadata, "entry_points", lambda group: [good, bad] if group == "mfm.operations" else [])
    reg = load_registry(["engine.demo_ops"])  # the same objects again: no duplicate error
    assert "demo_flaky" in reg
    assert len(reg.load_errors) == 1 and "broken" in reg.load_errors[0]


# ---------------------------------------------------------------------------------------------
# Demo operations, run in memory with the real engine and exec transport
# ---------------------------------------------------------------------------------------------

DEMO_PARAMS: dict[str, dict[str, Any]] = {
    "demo_pipeline": {"words": ["ab", "cde"]},
    "demo_flaky": {"fail_times": 2, "base_delay_ms": 1, "max_delay_ms": 2},
    "demo_fanout": {"items": 4, "max_concurrency": 2, "item_delay_ms": 1},
    "demo_big": {"states": 3, "events": 2, "delay_ms": 0},
}


def _engine(reg: OperationRegistry, mem: MemoryStore, run_id: RunId, **kw: Any) -> Engine:
    return Engine(
        plan_resolver=reg.plan_resolver(OperationEnv(artifacts=mem.artifacts)),
        transports=[ExecTransportFactory()],
        run_ids=lambda: run_id,
        cancel_poll_interval=0.05,
        **kw,
    )


async def _run_demo(op_id: str, params: dict[str, Any], **kw: Any) -> tuple[MemoryStore, RunId, Any]:
    mem = MemoryStore()
    reg = load_registry(["engine.demo_ops"], entry_points=False)
    prepared = await prepare_run(mem.stores, reg, op_id, params, run_id=RunId.new_v4())
    start = await load_start_run(mem.stores, reg, prepared.manifest_id)
    result = await _engine(reg, mem, prepared.run_id, **kw).start(mem.stores, start)
    return mem, prepared.run_id, result


def test_every_demo_has_a_json_schema_and_a_valid_default_plan(tmp_path: Path) -> None:
    reg = load_registry(["engine.demo_ops"], entry_points=False)
    ids = [str(o.op_id) for o in reg.operations()]
    assert ids == [
        "demo_big",
        "demo_child",
        "demo_children",
        "demo_fanout",
        "demo_fix",
        "demo_flaky",
        "demo_pipeline",
        "demo_side_effect",
    ]
    required: dict[str, dict[str, Any]] = {
        "demo_side_effect": {"folder": str(tmp_path)},
        "demo_child": {"pipeline": {}, "input": {"index": 0}},  # made by its parent (§16 child manifest)
    }
    for op in reg.operations():
        json.dumps(op.describe())
        params = op.validate_params(required.get(str(op.op_id), {}))
        plan = op.build_plan(params, OperationEnv())
        assert plan.op_id == op.op_id
        assert op.config_for(params).exec_allowlist is not None


@pytest.mark.parametrize("op_id", sorted(DEMO_PARAMS))
async def test_demo_completes_and_replays_deterministically(op_id: str) -> None:
    mem, run_id, result = await _run_demo(op_id, DEMO_PARAMS[op_id])
    assert result.phase is RunPhase.COMPLETED
    reg = load_registry(["engine.demo_ops"], entry_points=False)
    verdict = await Engine(plan_resolver=reg.plan_resolver(OperationEnv(artifacts=mem.artifacts))).replay(
        mem.stores, run_id
    )
    assert verdict.verdict == "deterministic"


async def test_demo_pipeline_writes_output_artifact_and_event() -> None:
    mem, run_id, _result = await _run_demo("demo_pipeline", {"words": ["ab", "cde"]})
    envs = await mem.events.read_range(run_id, 1)
    written = [e.event for e in envs if isinstance(e.event, DomainEvent) and e.event.name == "artifact_written"]
    assert len(written) == 1
    info = ArtifactWritten.model_validate(written[0].payload)
    assert str(info.kind) == "Output" and written[0].payload_ref == info.artifact_id
    summary = await read_canonical_json(mem.artifacts, info.artifact_id)
    assert summary["count"] == 2 and summary["total_length"] == 5 and summary["longest"] == "cde"
    assert summary["shouted"] == ["AB", "CDE"]


async def test_demo_flaky_counts_failures_through_facts() -> None:
    mem, run_id, _result = await _run_demo("demo_flaky", {"fail_times": 2, "base_delay_ms": 1, "max_delay_ms": 2})
    envs = await mem.events.read_range(run_id, 1)
    failures = [e.event for e in envs if isinstance(e.event, StateFailed)]
    assert [f.error.code for f in failures] == ["upstream_unavailable"] * 2
    assert all(f.error.retryable for f in failures)
    assert sum(1 for e in envs if e.kind == "retry_scheduled") == 2


async def test_demo_flaky_fails_when_attempts_run_out() -> None:
    _, _, result = await _run_demo("demo_flaky", {"fail_times": 5, "max_attempts": 2, "base_delay_ms": 1})
    assert result.phase is RunPhase.FAILED


async def test_demo_fix_fails_non_retryably_until_the_file_exists(tmp_path: Path) -> None:
    needed = tmp_path / "fixme"
    mem, run_id, result = await _run_demo("demo_fix", {"required_file": str(needed)})
    assert result.phase is RunPhase.FAILED
    failed = [e.event for e in await mem.events.read_range(run_id, 1) if isinstance(e.event, StateFailed)]
    assert failed[-1].error.code == "needs_file" and not failed[-1].error.retryable
    needed.write_text("ok")
    _, _, again = await _run_demo("demo_fix", {"required_file": str(needed)})
    assert again.phase is RunPhase.COMPLETED


async def test_demo_side_effect_applies_once_across_crash_and_resume(tmp_path: Path) -> None:
    params = {"folder": str(tmp_path / "out"), "content": "once"}
    mem, run_id, result = await _run_demo(
        "demo_side_effect", params, failpoints=Failpoints.stop_after_handler("demo.main.apply")
    )
    assert result.phase is RunPhase.RUNNING  # "crashed" after the file was written, before StateCompleted
    target = tmp_path / "out" / "mfm-demo-side-effect.txt"
    assert target.read_text() == "once"
    target.write_text("changed by someone")  # a second application would be refused by the check anyway
    reg = load_registry(["engine.demo_ops"], entry_points=False)
    resumed = await _engine(reg, mem, run_id).resume(mem.stores, run_id)
    assert resumed.phase is RunPhase.COMPLETED
    envs = await mem.events.read_range(run_id, 1)
    assert sum(1 for e in envs if e.kind == "side_effect_applied") == 1
    assert target.read_text() == "changed by someone"


def test_side_effect_params_are_validated(tmp_path: Path) -> None:
    reg = load_registry(["engine.demo_ops"], entry_points=False)
    op = reg.get("demo_side_effect")
    with pytest.raises(OperationError) as err:
        op.validate_params({"folder": "relative/dir", "file_name": "a/b"})
    assert "folder" in err.value.message and "file_name" in err.value.message
    plan = op.build_plan(op.validate_params({"folder": str(tmp_path)}), OperationEnv())
    meta = plan.state("demo.main.apply").meta()  # type: ignore[arg-type]
    assert meta.idempotency.key_value is not None
