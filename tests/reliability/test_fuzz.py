"""Fuzzing with hypothesis: every input ends in a result or one of the contract's errors, never anything else.

"Contract errors" are ``MfmError`` (with a non-empty ``code`` and message) and the typed ``ValueError`` s the
contract defines for pure functions (``IdValidationError``, ``CanonicalJsonError``, ``PlanValidationError``), each
with a ``kind``. Covered: identifiers, canonical JSON input, event envelopes (``decode_envelope`` on random JSON and
bytes), manifests and run configs read back from the artifact store, operation parameters, plans run by the engine,
event files with random byte flips / truncations / garbage (read by the filesystem store and by doctor), artifact
files with random damage, and command-line arguments. Example counts are printed at the end (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import json
import string
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine._kinds import ArtifactKind
from engine.config import RunManifest
from engine.doctor import check_store
from engine.errors import MfmError, StorageError
from engine.events import EventEnvelope, decode_envelope
from engine.hashing import CanonicalJsonError, canonical_json_bytes
from engine.ids import ArtifactId, IdValidationError, OpId, OpPath, RunId, StateId, StreamId
from engine.operations import load_registry, prepare_run, read_manifest
from engine.plan import DependencyEdge, ExecutionPlan, PlanValidationError, StateGraph, StateNode, topological_order
from engine.runtime import Engine
from engine.stores import MemoryStore
from engine.stores.fs import FsStore
from engine.testing import FakeClock, FakeSleeper, SetKey, base_config, make_manifest, start_plan
from mfm_tui.cli import main

EXAMPLES: Counter[str] = Counter()
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MNEMONIC = "abandon ability able about above absent absorb abstract absurd abuse access accident"
SECRETS = ["password", "API_KEY", "x-api-key", "Bearer abc", "seed phrase", "refresh_token", MNEMONIC]


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    print(f"\nfuzz examples: {dict(sorted(EXAMPLES.items()))}, total {sum(EXAMPLES.values())}")


def contract_error(exc: BaseException) -> None:
    """Fail unless ``exc`` is one of the contract's errors, with a code (or kind) and a message."""
    if isinstance(exc, MfmError):
        assert exc.code and isinstance(exc.code, str), repr(exc)
        assert exc.message, repr(exc)
        return
    if isinstance(exc, IdValidationError | CanonicalJsonError | PlanValidationError):
        assert getattr(exc, "kind", None), repr(exc)
        assert str(exc), repr(exc)
        return
    raise AssertionError(f"unexpected {type(exc).__name__}: {exc!r}") from exc


texts = st.one_of(st.text(max_size=40), st.sampled_from(SECRETS), st.text(alphabet="ab ", max_size=80))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(texts, inner, max_size=5)),
    max_leaves=20,
)
uuids = st.uuids().map(str)
hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
segments = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)


# ---------------------------------------------------------------------------------------------
# Identifiers and canonical JSON
# ---------------------------------------------------------------------------------------------

ID_TYPES = (RunId, ArtifactId, StateId, OpId, OpPath, StreamId)


@FAST
@given(
    cls=st.sampled_from(ID_TYPES),
    value=st.one_of(
        st.text(max_size=80),
        uuids,
        hex64,
        st.lists(segments, min_size=1, max_size=4).map(".".join),
        st.tuples(segments, st.text(max_size=10)).map(":".join),
        st.binary(max_size=10),
        st.integers(),
        st.none(),
    ),
)
def test_fuzz_identifiers(cls: Any, value: Any) -> None:
    EXAMPLES["ids"] += 1
    try:
        ident = cls(value)
    except BaseException as exc:
        contract_error(exc)
        assert isinstance(exc, IdValidationError) and exc.kind == cls.kind
        return
    assert isinstance(ident, str) and ident == value
    assert cls(str(ident)) == ident


@FAST
@given(
    value=st.one_of(
        json_values,
        st.sets(st.integers(), max_size=3),
        st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
        st.binary(max_size=5),
        st.tuples(st.integers(), texts),
    )
)
def test_fuzz_canonical_json(value: Any) -> None:
    EXAMPLES["canonical_json"] += 1
    try:
        data = canonical_json_bytes(value)
    except BaseException as exc:
        contract_error(exc)
        assert isinstance(exc, CanonicalJsonError)
        return
    assert isinstance(data, bytes)
    assert canonical_json_bytes(json.loads(data)) == data  # idempotent


# ---------------------------------------------------------------------------------------------
# Event envelopes
# ---------------------------------------------------------------------------------------------

kernel_events = st.one_of(
    st.fixed_dictionaries(
        {
            "RunStarted": st.fixed_dictionaries(
                {"op_id": texts, "manifest_id": hex64, "initial_snapshot_id": json_values}
            )
        }
    ),
    st.fixed_dictionaries(
        {
            "StateEntered": st.fixed_dictionaries(
                {"state_id": st.one_of(texts, st.just("m.s.l")), "attempt": scalars, "base_snapshot_id": hex64}
            )
        }
    ),
    st.fixed_dictionaries({"StateFailed": st.fixed_dictionaries({"state_id": texts, "error": json_values})}),
    st.fixed_dictionaries(
        {"RunCompleted": st.fixed_dictionaries({"status": texts, "final_snapshot_id": st.one_of(st.none(), hex64)})}
    ),
)
envelope_like = st.fixed_dictionaries(
    {
        "run_id": st.one_of(uuids, texts),
        "seq": st.one_of(st.integers(min_value=-3, max_value=2**65), scalars),
        "ts_millis": st.one_of(st.none(), st.integers(min_value=-3, max_value=2**65), scalars),
        "event": st.one_of(
            st.fixed_dictionaries({"Kernel": kernel_events}),
            st.fixed_dictionaries(
                {
                    "Domain": st.fixed_dictionaries(
                        {"name": texts, "payload": json_values, "payload_ref": st.one_of(st.none(), hex64, texts)}
                    )
                }
            ),
            json_values,
        ),
    }
)


@FAST
@given(raw=st.one_of(envelope_like, json_values))
def test_fuzz_decode_envelope_on_random_json(raw: Any) -> None:
    EXAMPLES["envelopes_json"] += 1
    try:
        text = json.dumps(raw, allow_nan=True)
    except (TypeError, ValueError):
        return
    try:
        env = decode_envelope(text)
    except BaseException as exc:
        contract_error(exc)
        assert isinstance(exc, StorageError) and exc.code == "machine_event_decode_failed"
        return
    assert isinstance(env, EventEnvelope)
    assert decode_envelope(env.to_json()) == env


@FAST
@given(data=st.binary(max_size=200))
def test_fuzz_decode_envelope_on_random_bytes(data: bytes) -> None:
    EXAMPLES["envelopes_bytes"] += 1
    try:
        decode_envelope(data)
    except BaseException as exc:
        contract_error(exc)
        return


# ---------------------------------------------------------------------------------------------
# Manifests, run configs, operation parameters (through the artifact store)
# ---------------------------------------------------------------------------------------------

VALID_MANIFEST = make_manifest(base_config()).model_dump(mode="json")


def manifest_variants() -> st.SearchStrategy[Any]:
    def mutate(draw_value: tuple[str, Any]) -> Any:
        key, value = draw_value
        out = json.loads(json.dumps(VALID_MANIFEST))
        if key.startswith("run_config."):
            out["run_config"][key.split(".", 1)[1]] = value
        else:
            out[key] = value
        return out

    keys = st.sampled_from(
        [
            "op_id",
            "op_version",
            "input_params",
            "run_config",
            "build",
            "run_config.retry_policy",
            "run_config.io_mode",
            "run_config.execution_mode",
            "run_config.event_profile",
            "run_config.skip_tags",
            "run_config.exec_allowlist",
            "run_config.replay_missing_fact_retryable",
            "run_config.context_checkpointing",
        ]
    )
    return st.one_of(st.tuples(keys, json_values).map(mutate), json_values)


@FAST
@given(value=manifest_variants(), as_raw=st.booleans())
def test_fuzz_manifest_and_run_config_read_back(value: Any, as_raw: bool) -> None:
    EXAMPLES["manifests"] += 1

    async def go() -> None:
        ms = MemoryStore()
        if as_raw:
            data = json.dumps(value, allow_nan=True).encode()
        else:
            try:
                data = canonical_json_bytes(value)
            except CanonicalJsonError:
                return
        aid = await ms.artifacts.put(ArtifactKind.MANIFEST, data)
        try:
            manifest = await read_manifest(ms.artifacts, aid)
        except BaseException as exc:
            contract_error(exc)
            return
        assert isinstance(manifest, RunManifest)

    asyncio.run(go())


REGISTRY = load_registry(["engine.demo_ops"], entry_points=False)


@FAST
@given(
    op_id=st.one_of(
        st.sampled_from(["demo_pipeline", "demo_flaky", "demo_fanout", "demo_side_effect", "demo_big", "demo_fix"]),
        texts,
    ),
    params=st.one_of(
        st.dictionaries(
            st.sampled_from(
                ["words", "fail_times", "items", "folder", "states", "max_concurrency", "required_file", "x"]
            ),
            json_values,
            max_size=3,
        ),
        json_values,
    ),
)
def test_fuzz_operation_parameters(op_id: str, params: Any) -> None:
    EXAMPLES["operation_params"] += 1

    async def go() -> None:
        ms = MemoryStore()
        try:
            prepared = await prepare_run(ms.stores, REGISTRY, op_id, params, run_id=RunId.new_v4())
        except BaseException as exc:
            contract_error(exc)
            return
        assert await read_manifest(ms.artifacts, prepared.manifest_id) == prepared.manifest

    asyncio.run(go())


# ---------------------------------------------------------------------------------------------
# Plans, run by the engine
# ---------------------------------------------------------------------------------------------

POOL = [StateId(f"m.main.s{i}") for i in range(5)]


@FAST
@given(
    states=st.lists(st.sampled_from(POOL), max_size=5),
    edges=st.lists(st.tuples(st.sampled_from(POOL), st.sampled_from(POOL)), max_size=6),
    concurrency=st.integers(min_value=0, max_value=3),
)
def test_fuzz_plans_run_by_the_engine(
    states: list[StateId], edges: list[tuple[StateId, StateId]], concurrency: int
) -> None:
    EXAMPLES["plans"] += 1
    from engine.config import FanOutJoin

    plan = ExecutionPlan(
        op_id=OpId("op"),
        graph=StateGraph(
            states=tuple(StateNode(id=s, state=SetKey(f"k_{s.split('.')[-1]}")) for s in states),
            edges=tuple(DependencyEdge.of(a, b) for a, b in edges),
        ),
    )
    try:
        order = topological_order(plan)
    except BaseException as exc:
        contract_error(exc)
        order = None
    cfg = base_config()
    if concurrency != 1:
        try:
            cfg = cfg.model_copy(update={"execution_mode": FanOutJoin(max_concurrency=concurrency)})
        except BaseException as exc:
            contract_error(exc)

    async def go() -> None:
        ms = MemoryStore()
        engine = Engine(plan_resolver=lambda m: plan, clock=FakeClock(), sleeper=FakeSleeper())
        try:
            result = await start_plan(engine, ms.stores, plan, cfg)
        except BaseException as exc:
            contract_error(exc)
            assert await ms.events.list_runs() == []  # nothing stored when start refuses
            return
        assert order is not None
        assert result.phase.value == "Completed"

    asyncio.run(go())


# ---------------------------------------------------------------------------------------------
# Damaged event files and artifacts (filesystem store, doctor)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunId, bytes, bytes]:
    """A store with one finished 4-state run; its event file bytes and one artifact's bytes."""
    root = tmp_path_factory.mktemp("fuzz") / "store"

    async def go() -> tuple[RunId, bytes]:
        store = FsStore(root)
        from engine.testing import make_plan

        plan = make_plan([(f"s{i}", SetKey(f"k{i}", i)) for i in range(4)])
        engine = Engine(plan_resolver=lambda m: plan, clock=FakeClock(), sleeper=FakeSleeper())
        result = await start_plan(engine, store.stores, plan, base_config())
        assert result.final_snapshot_id is not None
        return result.run_id, await store.artifacts.get(result.final_snapshot_id)

    run_id, blob = asyncio.run(go())
    return root, run_id, (root / "runs" / run_id / "events.jsonl").read_bytes(), blob


damage = st.tuples(
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=3),
    st.one_of(st.none(), st.floats(0, 1)),
    st.binary(max_size=30),
)


def apply_damage(data: bytes, how: tuple[list[tuple[float, int]], float | None, bytes]) -> bytes:
    flips, cut, extra = how
    out = bytearray(data)
    for pos, xor in flips:
        if out:
            out[int(pos * len(out))] ^= xor
    if cut is not None:
        out = out[: int(cut * len(out))]
    return bytes(out) + extra


@SLOW
@given(how=damage)
def test_fuzz_damaged_event_files(damaged_base: tuple[Path, RunId, bytes, bytes], how: Any) -> None:
    EXAMPLES["event_files"] += 1
    root, run_id, good, _ = damaged_base
    bad = apply_damage(good, how)
    path = root / "runs" / run_id / "events.jsonl"
    path.write_bytes(bad)
    try:
        store = FsStore(root)
        readable = True
        try:
            envs = asyncio.run(store.events.read_range(run_id, 1))
        except BaseException as exc:
            contract_error(exc)
            assert isinstance(exc, StorageError)
            readable = False
        else:
            assert [e.seq for e in envs] == list(range(1, len(envs) + 1))
            assert all(e.run_id == run_id for e in envs)
            if bad == good:
                assert len(envs) == 10
        finally:
            store.close()
        report = check_store(root, [run_id])  # doctor never raises on a damaged file ...
        if report.ok:
            assert readable  # ... and when it finds nothing, the store reads the run
    finally:
        path.write_bytes(good)


@SLOW
@given(how=damage)
def test_fuzz_damaged_artifacts(damaged_base: tuple[Path, RunId, bytes, bytes], how: Any) -> None:
    EXAMPLES["artifact_files"] += 1
    root, _, _, blob = damaged_base
    from engine.hashing import artifact_id_for_bytes

    aid = artifact_id_for_bytes(blob)
    path = root / "artifacts" / aid[:2] / aid
    bad = apply_damage(blob, how)
    path.write_bytes(bad)
    try:
        # The run log holds the blob (format v2): the file is a copy, a bad one a repairable warning ...
        assert ("artifact_copy_bad" in check_store(root).codes()) == (bad != blob)
        store = FsStore(root)
        try:
            got = asyncio.run(store.artifacts.get(ArtifactId(aid)))
        except BaseException as exc:
            contract_error(exc)
            raise
        finally:
            store.close()
        assert got == blob  # ... and a read serves the verified blob and rebuilds the copy from the log
        assert path.read_bytes() == blob
    finally:
        path.write_bytes(blob)


# ---------------------------------------------------------------------------------------------
# Command-line arguments
# ---------------------------------------------------------------------------------------------

COMMANDS = ["runs", "show", "events", "artifact", "ops", "doctor", "resume", "cancel", "--help", "nope", "--bogus"]
"""Never ``tui`` (or no command: the TUI), ``start``, ``replay`` or ``worker``: they start UIs and workers."""
OPTIONS = ["--json", "--from", "--status", "--op", "--raw", "--wait", "--reason", "--repair", "-p", "--follow", "-x"]
EXIT_CODES = {0, 1, 2, 3, 4}


@SLOW
@given(
    command=st.sampled_from(COMMANDS),
    tokens=st.lists(
        st.one_of(
            st.sampled_from(OPTIONS),
            st.sampled_from(["RUN", "RUNPREFIX", "ARTIFACT", "0", "-1", "completed", "failed", "demo_big"]),
            st.text(alphabet=string.printable, max_size=12),
            st.text(max_size=6),
        ),
        max_size=4,
    ),
)
def test_fuzz_cli_arguments(damaged_base: tuple[Path, RunId, bytes, bytes], command: str, tokens: list[str]) -> None:
    EXAMPLES["cli_args"] += 1
    root, run_id, _, blob = damaged_base
    from engine.hashing import artifact_id_for_bytes

    names = {"RUN": str(run_id), "RUNPREFIX": str(run_id)[:6], "ARTIFACT": str(artifact_id_for_bytes(blob))}
    argv = ["--store", str(root), command, *(names.get(t, t) for t in tokens)]
    if "\x00" in "".join(argv):
        return  # the OS cannot pass a NUL inside an argument
    runner = CliRunner()
    with runner.isolation() as (out, err, *_):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        output = out.getvalue().decode(errors="replace") + err.getvalue().decode(errors="replace")
    assert code in EXIT_CODES, (argv, code, output)
    assert "Traceback" not in output, (argv, output)
