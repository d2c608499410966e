"""The child-run fixtures of CONFORMANCE section M: the ``child_parent`` op, the proof op children, the transport.

Shared by the in-process tests and by the worker process that the SIGKILL tests start
(``python -m tests.engine.child_fixtures STORE WORKDIR start|resume|start-stop-after-join``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from engine.child_runs import (
    ChildRunFactory,
    ChildRunSpawnRequest,
    ChildRunSpawnResponse,
    await_child_run_v1,
    spawn_child_run_v1,
)
from engine.config import EventProfile, RunConfig, RunManifest
from engine.context import DynContext
from engine.errors import StateError
from engine.hashing import artifact_id_for_json
from engine.ids import FactKey, OpId, StateId
from engine.io import IoCall, IoProvider
from engine.meta import Idempotency, SideEffectKind, StateMeta
from engine.plan import DependencyEdge, ExecutionPlan, StateGraph, StateNode
from engine.recorder import EventRecorder
from engine.runtime import Engine, Failpoints
from engine.testing import FakeClock, FakeSleeper, FnState, base_config
from engine.transport import LiveTransport, TransportContext

PARENT_CONFIG = base_config(event_profile=EventProfile.NORMAL)
CHILD_CONFIG = base_config()
SPAWN = "child_parent.main.spawn_children"
JOIN = "child_parent.main.join_children"
PARENT_ID = "0b7f3c1e-9a2d-4e5f-8a6b-1c2d3e4f5a6b"


def spawn_key(i: int) -> str:
    return f"child_parent:spawn|op:child_parent.main|i:{i}"


def await_key(i: int) -> str:
    return f"child_parent:await|op:child_parent.main|i:{i}"


def proof_plan() -> ExecutionPlan:
    """read_facts → apply_side_effect → write_output (the acceptance tests' proof op)."""

    async def read_facts(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        res = await io.call(IoCall(namespace="proof.read", request={"q": "facts"}, fact_key=FactKey("proof:read|i:0")))
        ctx.write("facts", res.response)

    async def apply_side_effect(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        key = artifact_id_for_json(ctx.read("facts"))
        fact_key = f"proof:side_effect|op:proof.main|id:{key}"
        res = await io.call(IoCall(namespace="proof.side_effect", request={"id": key}, fact_key=FactKey(fact_key)))
        ctx.write("receipt", res.response)

    async def write_output(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        out = {"facts": ctx.read("facts"), "receipt": ctx.read("receipt")}
        await io.record_value("proof:output", out)
        ctx.write("output", out)

    se = StateMeta(side_effects=SideEffectKind.APPLY_SIDE_EFFECT, idempotency=Idempotency.key("proof:apply"))
    ids = [f"proof.main.{n}" for n in ("read_facts", "apply_side_effect", "write_output")]
    return ExecutionPlan(
        op_id=OpId("proof"),
        graph=StateGraph(
            states=(
                StateNode(id=StateId(ids[0]), state=FnState(read_facts)),
                StateNode(id=StateId(ids[1]), state=FnState(apply_side_effect, se)),
                StateNode(id=StateId(ids[2]), state=FnState(write_output)),
            ),
            edges=(DependencyEdge.of(ids[0], ids[1]), DependencyEdge.of(ids[1], ids[2])),
        ),
    )


def child_request(i: int, cfg: RunConfig = CHILD_CONFIG) -> ChildRunSpawnRequest:
    return ChildRunSpawnRequest(op_id=OpId("proof"), op_version="0", input={"i": i}, run_config=cfg)


def parent_plan(children: int = 2) -> ExecutionPlan:
    async def spawn_children(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        for i in range(children):
            resp = await spawn_child_run_v1(io, rec, spawn_key(i), child_request(i))
            ctx.write(f"child_{i}", resp.model_dump(mode="json"))

    async def join_children(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        spawned = [(i, ChildRunSpawnResponse.model_validate(ctx.read(f"child_{i}"))) for i in range(children)]
        # Joined in a deterministic order: sorted by child run UUID bytes (§16).
        import uuid  # local: only this handler needs it

        spawned.sort(key=lambda p: uuid.UUID(str(p[1].child_run_id)).bytes)
        results = {}
        for i, sp in spawned:
            done = await await_child_run_v1(io, rec, await_key(i), sp)
            if str(done.status) != "Completed":
                raise StateError.new("child_failed", f"child {i} ended {done.status}", retryable=False)
            results[str(i)] = done.final_snapshot_id
        ctx.write("children", results)

    return ExecutionPlan(
        op_id=OpId("child_parent"),
        graph=StateGraph(
            states=(
                StateNode(id=StateId(SPAWN), state=FnState(spawn_children)),
                StateNode(id=StateId(JOIN), state=FnState(join_children)),
            ),
            edges=(DependencyEdge.of(SPAWN, JOIN),),
        ),
    )


def resolver(manifest: RunManifest) -> ExecutionPlan:
    return proof_plan() if str(manifest.op_id) == "proof" else parent_plan()


class ProofTransport:
    def __init__(self, owner: ProofFactory, context: TransportContext) -> None:
        self._owner = owner
        self._context = context

    async def call(self, namespace: str, request: Any) -> Any:
        owner = self._owner
        run = str(self._context.run_id)
        if namespace == "proof.side_effect":
            owner.blocked.append(run)
            if owner.workdir is not None:
                (owner.workdir / f"blocked-{run}").touch()
            await owner.barrier.wait()
            if owner.workdir is not None:
                while not (owner.workdir / "release").exists():
                    await asyncio.sleep(0.02)
        owner.calls.append((run, namespace))
        if owner.workdir is not None:
            with open(owner.workdir / "calls.log", "a") as f:
                f.write(f"{run} {namespace}\n")
                f.flush()
                os.fsync(f.fileno())
        return {"namespace": namespace, "answer": 42}


class ProofFactory:
    """Group ``proof``; counts completed calls (also in ``WORKDIR/calls.log``); ``proof.side_effect`` waits for
    ``barrier`` (and, with a workdir, for the file ``WORKDIR/release``)."""

    def __init__(self, workdir: Path | None = None, *, blocked: bool = False) -> None:
        self.workdir = workdir
        self.calls: list[tuple[str, str]] = []
        self.blocked: list[str] = []
        self.barrier = asyncio.Event()
        if not blocked:
            self.barrier.set()

    @property
    def namespace_group(self) -> str:
        return "proof"

    def make(self, context: TransportContext) -> LiveTransport:
        return ProofTransport(self, context)

    def count(self, namespace: str) -> int:
        return sum(1 for _, ns in self.calls if ns == namespace)


def child_factory(proof: ProofFactory, **kw: Any) -> ChildRunFactory:
    return ChildRunFactory([proof], plan_resolver=resolver, clock=FakeClock(), sleeper=FakeSleeper(), **kw)


def parent_engine(factory: ChildRunFactory, failpoints: Failpoints | None = None) -> Engine:
    return Engine(
        plan_resolver=resolver, transports=factory, clock=FakeClock(), sleeper=FakeSleeper(), failpoints=failpoints
    )


async def _main(store_path: str, workdir: str, action: str) -> None:
    from engine.stores.fs import FsStore  # local: only the worker process needs the fs store here
    from engine.testing import make_manifest, store_manifest

    store = FsStore(Path(store_path))
    work = Path(workdir)
    factory = child_factory(ProofFactory(work))
    stores = store.stores
    if action in ("start", "start-stop-after-join"):
        from engine.context import JsonContext
        from engine.engine import StartRun
        from engine.ids import RunId

        fp = Failpoints.stop_after_handler(JOIN) if action == "start-stop-after-join" else None
        manifest = make_manifest(PARENT_CONFIG, op_id="child_parent")
        mid = await store_manifest(stores, manifest)
        run = StartRun(
            manifest=manifest,
            manifest_id=mid,
            plan=parent_plan(),
            run_config=PARENT_CONFIG,
            initial_context=JsonContext(),
        )
        result = await parent_engine(factory, fp).start(stores, run, run_id=RunId(PARENT_ID))
    else:
        from engine.ids import RunId

        result = await parent_engine(factory).resume(stores, RunId(PARENT_ID))
    (work / f"{action}.done").write_text(str(result.phase))
    if action == "start-stop-after-join":
        while True:  # "crashed": wait for the test's SIGKILL
            time.sleep(1)


if __name__ == "__main__":
    asyncio.run(_main(*sys.argv[1:4]))
