"""Demo operations that do real work and, together, show every feature in the first minute.

* ``demo_pipeline``: a real program through the exec transport (``/bin/sh``), its JSON output
  transformed, an output artifact written and announced with an ``artifact_written`` event;
* ``demo_flaky``: fails a configurable number of times (retryable) with exponential backoff, then
  succeeds; failures are counted through recorded facts, never process memory;
* ``demo_fanout``: fan-out over N items under ``FanOutJoin{max_concurrency}``;
* ``demo_side_effect``: writes a file, with ``Idempotency.key`` and a fact key derived from it, so
  a crash + resume never applies it twice (the program also checks for the file first);
* ``demo_fix``: fails non-retryably (``needs_file``) until the operator creates a file. A
  non-retryable failure ends the run (``RunCompleted{Failed}``, ENGINE-SPEC §7/§13 step 7), so
  after the fix a new run completes; a run whose worker died before the failure was recorded
  resumes and completes once the file exists;
* ``demo_big``: many states and domain events with a per-state delay (live watching, scale tests);
* ``demo_children``: fans out N child runs (``demo_child``, ENGINE-SPEC §16), awaits them and aggregates their
  results; the child named by ``fail_child`` needs a file first (``needs_file``), so the tree shows a failure
  that is fixed and then recovered.

Every IO call carries a fact key, so each run can be replayed (``mfm replay``). Registered through
the entry point ``demo = "engine.demo_ops:OPERATIONS"`` (group ``mfm.operations``).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine._kinds import ArtifactKind
from engine.child_runs import ChildRunSpawnRequest, await_child_run_v1, spawn_child_run_v1
from engine.config import Duration, EventProfile, Exponential, FanOutJoin, Fixed, RetryPolicy, RunConfig
from engine.context import DynContext
from engine.errors import ErrorCategory, StateError
from engine.events import DOMAIN_EVENT_ARTIFACT_WRITTEN, ArtifactWritten, DomainEvent
from engine.hashing import artifact_id_for_json, canonical_json_bytes
from engine.ids import FactKey, OpId, StateId
from engine.io import IoCall, IoProvider
from engine.live_io import side_effect_fact_key
from engine.meta import Idempotency, SideEffectKind, StateMeta, standard_tags
from engine.operations import Operation, OperationEnv
from engine.plan import DependencyEdge, ExecutionPlan, StateGraph, StateNode
from engine.recorder import EventRecorder
from engine.state import StateOutcome

__all__ = ["EXEC_ALLOWLIST", "OPERATIONS"]

EXEC_ALLOWLIST = ("/usr/bin/", "/bin/")
"""``/bin/sh`` resolves under one of these (``/usr/bin/dash`` on Debian)."""

SH = "/bin/sh"

Handler = Callable[[DynContext, IoProvider, EventRecorder], Awaitable[None]]


class FnState:
    """A state made of a meta and an async function (ctx, io, rec) → None."""

    def __init__(self, meta: StateMeta, fn: Handler) -> None:
        self._meta = meta
        self._fn = fn

    def meta(self) -> StateMeta:
        return self._meta

    async def handle(self, ctx: DynContext, io: IoProvider, rec: EventRecorder) -> StateOutcome:
        await self._fn(ctx, io, rec)
        return StateOutcome()


def _sid(local: str) -> StateId:
    return StateId(f"demo.main.{local}")


def _plan(op_id: str, states: list[tuple[str, FnState]], edges: list[tuple[str, str]]) -> ExecutionPlan:
    return ExecutionPlan(
        op_id=OpId(op_id),
        graph=StateGraph(
            states=tuple(StateNode(id=_sid(name), state=st) for name, st in states),
            edges=tuple(DependencyEdge.of(_sid(a), _sid(b)) for a, b in edges),
        ),
    )


def _chain(names: list[str]) -> list[tuple[str, str]]:
    return list(itertools.pairwise(names))


def _sh_call(fact_key: str | None, script: str, *args: str, timeout_ms: int = 60_000) -> IoCall:
    return IoCall(
        namespace="exec",
        request={
            "kind": "run_program_v1",
            "program_path": SH,
            "argv": ["-c", script, "sh", *args],
            "timeout_ms": timeout_ms,
        },
        fact_key=None if fact_key is None else FactKey(fact_key),
    )


def _config(
    *, max_attempts: int = 3, backoff: Fixed | Exponential | None = None, mode: FanOutJoin | None = None
) -> RunConfig:
    cfg = RunConfig(
        retry_policy=RetryPolicy(max_attempts=max_attempts, backoff=backoff or Fixed(delay=Duration.from_millis(1000))),
        event_profile=EventProfile.NORMAL,
        exec_allowlist=EXEC_ALLOWLIST,
    )
    return cfg.model_copy(update={"execution_mode": mode}) if mode is not None else cfg


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_only(*tags: str) -> StateMeta:
    return StateMeta(tags=tags, side_effects=SideEffectKind.READ_ONLY_IO)


def _fail(code: str, message: str, *, retryable: bool = False) -> StateError:
    return StateError.new(code, message, retryable=retryable, category=ErrorCategory.UNKNOWN)


# ---------------------------------------------------------------------------------------------
# demo_pipeline
# ---------------------------------------------------------------------------------------------

_FETCH_SCRIPT = r"""
set -e
secs="$1"; shift
echo "fetch: measuring $# word(s) after ${secs}s" >&2
if [ "$secs" -gt 0 ]; then sleep "$secs"; fi
printf '{"kernel":"%s","words":[' "$(uname -s)"
sep=""
for w in "$@"; do
  printf '%s{"word":"%s","length":%d}' "$sep" "$w" "${#w}"; sep=","
  echo "fetch: $w has ${#w} letters" >&2
done
printf ']}\n'
echo "fetch: done" >&2
"""


class PipelineParams(_Params):
    """Words to measure (lowercase letters, digits, ``_`` or ``-``) and how long the program runs."""

    words: list[str] = Field(default_factory=lambda: ["alpha", "beta", "gamma", "delta"], min_length=1, max_length=100)
    exec_seconds: int = Field(default=0, ge=0, le=3600, description="seconds the external program sleeps first")

    @field_validator("words")
    @classmethod
    def _word_shape(cls, words: list[str]) -> list[str]:
        for w in words:
            if not (1 <= len(w) <= 32) or any(not (c.isascii() and (c.isalnum() or c in "_-")) for c in w):
                raise ValueError(f"word {w!r} must be 1-32 ASCII letters, digits, '_' or '-'")
        return words


def _pipeline_plan(params: PipelineParams, env: OperationEnv) -> ExecutionPlan:
    async def fetch(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        call = _sh_call(
            "demo_pipeline:fetch",
            _FETCH_SCRIPT,
            str(params.exec_seconds),
            *params.words,
            timeout_ms=(params.exec_seconds + 60) * 1000,
        )
        result = await io.call(call)
        ctx.write("pipeline.raw", result.response)

    async def transform(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        raw = ctx.read("pipeline.raw")
        if not isinstance(raw, dict) or not isinstance(raw.get("words"), list):
            raise _fail("pipeline_bad_input", "the fetch step produced no word list")
        words = [w for w in raw["words"] if isinstance(w, dict)]
        lengths = [int(w.get("length", 0)) for w in words]
        longest = max(words, key=lambda w: int(w.get("length", 0)))["word"] if words else None
        ctx.write(
            "pipeline.summary",
            {
                "kernel": raw.get("kernel"),
                "count": len(words),
                "total_length": sum(lengths),
                "longest": longest,
                "shouted": sorted(str(w.get("word", "")).upper() for w in words),
            },
        )

    async def publish(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        if env.artifacts is None:
            raise _fail("no_artifact_store", "publish needs an artifact store")
        summary = ctx.read("pipeline.summary")
        artifact_id = await env.artifacts.put(ArtifactKind.OUTPUT, canonical_json_bytes(summary))
        written = ArtifactWritten(artifact_id=artifact_id, kind=ArtifactKind.OUTPUT, meta={"name": "summary.json"})
        await rec.emit(
            DomainEvent(
                name=DOMAIN_EVENT_ARTIFACT_WRITTEN, payload=written.model_dump(mode="json"), payload_ref=artifact_id
            )
        )
        ctx.write("pipeline.output_artifact", str(artifact_id))

    tags = standard_tags
    return _plan(
        "demo_pipeline",
        [
            ("fetch", FnState(_read_only(tags.FETCH_DATA, tags.IMPURE), fetch)),
            ("transform", FnState(StateMeta(tags=(tags.COMPUTE,)), transform)),
            ("publish", FnState(StateMeta(tags=(tags.REPORT,)), publish)),
        ],
        _chain(["fetch", "transform", "publish"]),
    )


DEMO_PIPELINE = Operation(
    op_id=OpId("demo_pipeline"),
    version="1",
    description="Run a real program (/bin/sh) through the exec transport, transform its JSON, write an output "
    "artifact.",
    params_model=PipelineParams,
    build_plan=_pipeline_plan,
    run_config=lambda p: _config(max_attempts=2),
)


# ---------------------------------------------------------------------------------------------
# demo_flaky
# ---------------------------------------------------------------------------------------------


class FlakyParams(_Params):
    """Fail ``fail_times`` times (retryable), then succeed; backoff doubles from ``base_delay_ms``."""

    fail_times: int = Field(default=2, ge=0, le=50)
    base_delay_ms: int = Field(default=2000, ge=0, le=3_600_000)
    max_delay_ms: int = Field(default=30_000, ge=0, le=3_600_000)
    max_attempts: int = Field(default=5, ge=1, le=100)


def _flaky_config(p: FlakyParams) -> RunConfig:
    backoff = Exponential(
        base_delay=Duration.from_millis(p.base_delay_ms), max_delay=Duration.from_millis(p.max_delay_ms)
    )
    return _config(max_attempts=p.max_attempts, backoff=backoff)


async def _count_bound(io: IoProvider, prefix: str) -> int:
    """How many facts ``<prefix>:0``, ``<prefix>:1`` … are bound (they are recorded in order)."""
    n = 0
    while await io.get_recorded_fact(f"{prefix}:{n}") is not None:
        n += 1
    return n


def _flaky_plan(params: FlakyParams, env: OperationEnv) -> ExecutionPlan:
    async def prepare(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        ctx.write("flaky.plan", {"fail_times": params.fail_times, "max_attempts": params.max_attempts})

    async def call(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        failures = await _count_bound(io, "demo_flaky:failure")
        if failures < params.fail_times:
            await io.record_value(f"demo_flaky:failure:{failures}", {"failure": failures + 1})
            raise _fail(
                "upstream_unavailable",
                f"simulated outage {failures + 1} of {params.fail_times}; will retry",
                retryable=True,
            )
        ctx.write("flaky.result", {"failures_before_success": failures, "ok": True})

    async def report(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        result = ctx.read("flaky.result") or {}
        ctx.write("flaky.report", f"succeeded after {result.get('failures_before_success', 0)} failure(s)")

    return _plan(
        "demo_flaky",
        [
            ("prepare", FnState(StateMeta(tags=(standard_tags.CONFIG,)), prepare)),
            ("call", FnState(StateMeta(tags=(standard_tags.FETCH_DATA,)), call)),
            ("report", FnState(StateMeta(tags=(standard_tags.REPORT,)), report)),
        ],
        _chain(["prepare", "call", "report"]),
    )


DEMO_FLAKY = Operation(
    op_id=OpId("demo_flaky"),
    version="1",
    description="Fail a few times (retryable) with exponential backoff you can watch count down, then succeed.",
    params_model=FlakyParams,
    build_plan=_flaky_plan,
    run_config=_flaky_config,
)


# ---------------------------------------------------------------------------------------------
# demo_fanout
# ---------------------------------------------------------------------------------------------


class FanoutParams(_Params):
    """``items`` states run between a split and a join, at most ``max_concurrency`` at once."""

    items: int = Field(default=8, ge=1, le=500)
    max_concurrency: int = Field(default=3, ge=1, le=64)
    item_delay_ms: int = Field(default=700, ge=0, le=3_600_000)


def _item(i: int) -> str:
    return f"item_{i:03d}"


def _fanout_plan(params: FanoutParams, env: OperationEnv) -> ExecutionPlan:
    async def split(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        ctx.write("fanout.items", params.items)

    def item_state(i: int) -> FnState:
        async def work(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
            await io.sleep_ms(params.item_delay_ms)
            ctx.write(f"fanout.{_item(i)}", {"i": i, "square": i * i})

        return FnState(StateMeta(tags=(standard_tags.COMPUTE,)), work)

    async def join(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        total = 0
        for i in range(params.items):
            value = ctx.read(f"fanout.{_item(i)}")
            if not isinstance(value, dict):
                raise _fail("fanout_item_missing", f"item {i} produced nothing")
            total += int(value["square"])
        ctx.write("fanout.sum_of_squares", total)

    names = [_item(i) for i in range(params.items)]
    states = [("split", FnState(StateMeta(tags=(standard_tags.CONFIG,)), split))]
    states += [(n, item_state(i)) for i, n in enumerate(names)]
    states += [("join", FnState(StateMeta(tags=(standard_tags.REPORT,)), join))]
    edges = [("split", n) for n in names] + [(n, "join") for n in names]
    return _plan("demo_fanout", states, edges)


DEMO_FANOUT = Operation(
    op_id=OpId("demo_fanout"),
    version="1",
    description="Fan out over N items under FanOutJoin{max_concurrency}, each taking a little while, then join.",
    params_model=FanoutParams,
    build_plan=_fanout_plan,
    run_config=lambda p: _config(mode=FanOutJoin(max_concurrency=p.max_concurrency)),
)


# ---------------------------------------------------------------------------------------------
# demo_side_effect
# ---------------------------------------------------------------------------------------------

_APPLY_SCRIPT = r"""
set -e
target="$1"; content="$2"
if [ -e "$target" ]; then printf '{"applied":false,"already_present":true}\n'; exit 0; fi
mkdir -p "$(dirname "$target")"
tmp="$target.tmp.$$"
printf '%s' "$content" > "$tmp"
mv "$tmp" "$target"
printf '{"applied":true,"already_present":false}\n'
"""

_VERIFY_SCRIPT = r"""
if [ -f "$1" ]; then printf '{"exists":true,"bytes":%d}\n' "$(wc -c < "$1")"; else printf '{"exists":false}\n'; fi
"""


def _simple_name(value: str) -> str:
    if not value or "/" in value or value in (".", "..") or "\x00" in value:
        raise ValueError("must be a plain file name (no '/')")
    return value


class SideEffectParams(_Params):
    """Write ``content`` to ``folder/file_name`` exactly once, even across crashes and resumes."""

    folder: str = Field(description="absolute folder to write into (created if missing)")
    file_name: str = "mfm-demo-side-effect.txt"
    content: str = Field(default="written once by mfm demo_side_effect\n", max_length=4096)

    @field_validator("folder")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not os.path.isabs(value):
            raise ValueError("must be an absolute path")
        return os.path.normpath(value)

    @field_validator("file_name")
    @classmethod
    def _plain(cls, value: str) -> str:
        return _simple_name(value)

    @property
    def target(self) -> str:
        return os.path.join(self.folder, self.file_name)


def _side_effect_plan(params: SideEffectParams, env: OperationEnv) -> ExecutionPlan:
    target = params.target
    idem = str(artifact_id_for_json({"op": "demo_side_effect", "target": target, "content": params.content}))
    apply_id = _sid("apply")

    async def plan_step(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        ctx.write("side_effect.target", target)

    async def apply(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        # No fact key on the call: in an ApplySideEffect state the engine derives it from the
        # idempotency key (§0.10), so a resumed attempt gets the recorded response back.
        already = await io.get_recorded_fact(side_effect_fact_key(apply_id, idem, 0)) is not None
        result = await io.call(_sh_call(None, _APPLY_SCRIPT, target, params.content))
        if not already:
            await rec.emit(
                DomainEvent(name="side_effect_applied", payload={"target": target, "result": result.response})
            )
        ctx.write("side_effect.applied", {"target": target, "idempotency_key": idem})

    async def verify(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        result = await io.call(_sh_call("demo_side_effect:verify", _VERIFY_SCRIPT, target))
        response = result.response
        if not isinstance(response, dict) or not response.get("exists"):
            raise _fail("side_effect_missing", f"{target} is missing after the side effect was applied")
        ctx.write("side_effect.verified", True)

    meta_apply = StateMeta(
        tags=(standard_tags.APPLY_SIDE_EFFECT, standard_tags.IMPURE),
        side_effects=SideEffectKind.APPLY_SIDE_EFFECT,
        idempotency=Idempotency.key(idem),
    )
    return _plan(
        "demo_side_effect",
        [
            ("plan", FnState(StateMeta(tags=(standard_tags.CONFIG,)), plan_step)),
            ("apply", FnState(meta_apply, apply)),
            ("verify", FnState(_read_only(standard_tags.REPORT), verify)),
        ],
        _chain(["plan", "apply", "verify"]),
    )


DEMO_SIDE_EFFECT = Operation(
    op_id=OpId("demo_side_effect"),
    version="1",
    description="Write a file once, with an idempotency key and a fact key, so crash + resume never writes twice.",
    params_model=SideEffectParams,
    build_plan=_side_effect_plan,
    run_config=lambda p: _config(max_attempts=3),
)


# ---------------------------------------------------------------------------------------------
# demo_fix
# ---------------------------------------------------------------------------------------------

_CHECK_SCRIPT = r"""
if [ -e "$1" ]; then printf '{"exists":true}\n'; else printf '{"exists":false}\n'; fi
"""


class FixParams(_Params):
    """Fails with ``needs_file`` (non-retryable) until ``required_file`` exists."""

    required_file: str = "/tmp/mfm-demo-fix"

    @field_validator("required_file")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not os.path.isabs(value):
            raise ValueError("must be an absolute path")
        return os.path.normpath(value)


def _fix_plan(params: FixParams, env: OperationEnv) -> ExecutionPlan:
    path = params.required_file

    async def check(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        # Each attempt looks once more (fact demo_fix:check:<n>); a check bound by an earlier
        # attempt that already saw the file counts (crash after the check, or replay).
        n = 0
        while await io.get_recorded_fact(f"demo_fix:check:{n}") is not None:
            seen = await io.call(_sh_call(f"demo_fix:check:{n}", _CHECK_SCRIPT, path))
            if isinstance(seen.response, dict) and seen.response.get("exists"):
                break
            n += 1
        else:
            seen = await io.call(_sh_call(f"demo_fix:check:{n}", _CHECK_SCRIPT, path))
            if not (isinstance(seen.response, dict) and seen.response.get("exists")):
                raise _fail("needs_file", f"operator action needed: create {path}")
        ctx.write("fix.found", path)

    async def finish(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        ctx.write("fix.done", True)

    return _plan(
        "demo_fix",
        [
            ("check", FnState(_read_only(standard_tags.FETCH_DATA), check)),
            ("finish", FnState(StateMeta(tags=(standard_tags.REPORT,)), finish)),
        ],
        _chain(["check", "finish"]),
    )


DEMO_FIX = Operation(
    op_id=OpId("demo_fix"),
    version="1",
    description="Fail non-retryably (needs_file) until you create the file named in its parameters.",
    params_model=FixParams,
    build_plan=_fix_plan,
    run_config=lambda p: _config(max_attempts=3),
)


# ---------------------------------------------------------------------------------------------
# demo_big
# ---------------------------------------------------------------------------------------------


class BigParams(_Params):
    """A chain of ``states`` states, each emitting ``events`` domain events and waiting ``delay_ms``."""

    states: int = Field(default=20, ge=1, le=100_000)
    events: int = Field(default=5, ge=0, le=100_000, description="domain events per state")
    delay_ms: int = Field(default=200, ge=0, le=3_600_000)


def _big_plan(params: BigParams, env: OperationEnv) -> ExecutionPlan:
    def step(i: int) -> FnState:
        async def work(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
            if params.events:
                await rec.emit_many(
                    [DomainEvent(name="tick", payload={"state": i, "n": j}) for j in range(params.events)]
                )
            if params.delay_ms:
                await io.sleep_ms(params.delay_ms)
            ctx.write("big.progress", {"done": i + 1, "of": params.states})

        return FnState(StateMeta(tags=(standard_tags.COMPUTE,)), work)

    width = max(4, len(str(params.states - 1)))
    names = [f"s_{i:0{width}d}" for i in range(params.states)]
    return _plan("demo_big", [(n, step(i)) for i, n in enumerate(names)], _chain(names))


DEMO_BIG = Operation(
    op_id=OpId("demo_big"),
    version="1",
    description="Many states and events with a per-state delay: for watching live and for scale tests.",
    params_model=BigParams,
    build_plan=_big_plan,
    run_config=lambda p: _config(max_attempts=1),
)


# ---------------------------------------------------------------------------------------------
# demo_children / demo_child
# ---------------------------------------------------------------------------------------------


class ChildInput(_Params):
    """What ``demo_children`` gives each child: its index, how long it works, the file it may need."""

    index: int = Field(ge=0, le=1000)
    work_ms: int = Field(default=0, ge=0, le=3_600_000)
    required_file: str | None = None


class ChildParams(_Params):
    """A child run's parameters: the §16 child manifest's ``input_params`` (``pipeline`` + ``input``)."""

    pipeline: dict[str, Any]
    input: ChildInput


class ChildrenParams(_Params):
    """Spawn ``children`` child runs; child ``fail_child`` (if set) fails until ``required_file`` exists."""

    children: int = Field(default=3, ge=1, le=50)
    work_ms: int = Field(default=1500, ge=0, le=3_600_000, description="how long each child works")
    fail_child: int | None = Field(default=None, ge=0, le=49, description="index of the child that needs a fix")
    required_file: str = "/tmp/mfm-demo-children-fix"

    @field_validator("required_file")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not os.path.isabs(value):
            raise ValueError("must be an absolute path")
        return os.path.normpath(value)


CHILD_OP = "demo_child"
CHILD_VERSION = "1"


def _child_config() -> RunConfig:
    return _config(max_attempts=1)


def _child_plan(params: ChildParams, env: OperationEnv) -> ExecutionPlan:
    inp = params.input

    async def work(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        if inp.work_ms:
            await io.sleep_ms(inp.work_ms)
        ctx.write("child.index", inp.index)

    async def check(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        if inp.required_file is None:
            return
        seen = await io.call(_sh_call("demo_child:check", _CHECK_SCRIPT, inp.required_file))
        if not (isinstance(seen.response, dict) and seen.response.get("exists")):
            raise _fail("needs_file", f"operator action needed: create {inp.required_file}, then recover the parent")

    async def report(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        ctx.write("child.result", inp.index * inp.index + 1)

    return _plan(
        CHILD_OP,
        [
            ("work", FnState(StateMeta(tags=(standard_tags.COMPUTE,)), work)),
            ("check", FnState(_read_only(standard_tags.FETCH_DATA), check)),
            ("report", FnState(StateMeta(tags=(standard_tags.REPORT,)), report)),
        ],
        _chain(["work", "check", "report"]),
    )


DEMO_CHILD = Operation(
    op_id=OpId(CHILD_OP),
    version=CHILD_VERSION,
    description="One child of demo_children (started by its parent, not by hand): works, checks, reports.",
    params_model=ChildParams,
    build_plan=_child_plan,
    run_config=lambda p: _child_config(),
)


def _children_plan(params: ChildrenParams, env: OperationEnv) -> ExecutionPlan:
    async def run_children(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        spawned = []
        for i in range(params.children):
            request = ChildRunSpawnRequest(
                op_id=OpId(CHILD_OP),
                op_version=CHILD_VERSION,
                input=ChildInput(
                    index=i,
                    work_ms=params.work_ms,
                    required_file=params.required_file if i == params.fail_child else None,
                ).model_dump(mode="json"),
                run_config=_child_config(),
            )
            spawned.append((i, await spawn_child_run_v1(io, rec, f"demo_children:spawn|i:{i}", request)))
        spawned.sort(key=lambda pair: uuid.UUID(str(pair[1].child_run_id)).bytes)  # deterministic join order (§16)
        results: dict[str, int] = {}
        failed: list[str] = []
        for i, sp in spawned:
            done = await await_child_run_v1(io, rec, f"demo_children:await|i:{i}", sp)
            final = done.final_snapshot if isinstance(done.final_snapshot, dict) else {}
            if str(done.status) != "Completed":
                failed.append(f"child {i} ({sp.child_run_id}) {done.status}")
            else:
                results[str(i)] = int(final.get("child.result", 0))
        if failed:
            raise _fail("child_failed", "; ".join(failed) + ": fix it, then recover this run")
        ctx.write("children.results", results)

    async def aggregate(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        results = ctx.read("children.results") or {}
        ctx.write("children.total", sum(int(v) for v in results.values()))

    return _plan(
        "demo_children",
        [
            ("run_children", FnState(StateMeta(tags=(standard_tags.COMPUTE,)), run_children)),
            ("aggregate", FnState(StateMeta(tags=(standard_tags.REPORT,)), aggregate)),
        ],
        _chain(["run_children", "aggregate"]),
    )


DEMO_CHILDREN = Operation(
    op_id=OpId("demo_children"),
    version="1",
    description="Fan out N child runs, await them, aggregate their results (a run tree; one child can need a fix).",
    params_model=ChildrenParams,
    build_plan=_children_plan,
    run_config=lambda p: _config(max_attempts=2),
)


OPERATIONS: tuple[Operation, ...] = (
    DEMO_BIG,
    DEMO_CHILD,
    DEMO_CHILDREN,
    DEMO_FANOUT,
    DEMO_FIX,
    DEMO_FLAKY,
    DEMO_PIPELINE,
    DEMO_SIDE_EFFECT,
)
