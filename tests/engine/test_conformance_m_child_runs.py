"""CONFORMANCE section M (85–90): child runs (ENGINE-SPEC §16), on the memory and the filesystem stores.

88 and 89 also run with a real worker process killed by SIGKILL (``tests.engine.child_fixtures`` is the worker).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.artifacts import read_canonical_json
from engine.child_runs import (
    CHILD_RUN_AWAIT,
    CHILD_RUN_SPAWN,
    ChildRunFactory,
    ChildRunSpawnRequest,
    child_manifest,
    child_run_id,
    children_of,
)
from engine.context import JsonContext
from engine.engine import RunPhase, StartRun, Stores
from engine.errors import IoError
from engine.events import DomainEvent, RunCompleted, RunStarted
from engine.hashing import artifact_id_for_json
from engine.ids import ArtifactId, RunId, StateId
from engine.io import IoCall
from engine.runtime import Engine, Failpoints
from engine.stores.fs import FsStore
from engine.stores.memory import MemoryStore
from engine.testing import (
    CountingFactory,
    FakeClock,
    FakeSleeper,
    FnState,
    make_manifest,
    read_events,
    snapshot_of,
    store_manifest,
)
from engine.transport import TransportContext
from tests.engine.child_fixtures import (
    CHILD_CONFIG,
    JOIN,
    PARENT_CONFIG,
    PARENT_ID,
    SPAWN,
    ProofFactory,
    child_factory,
    child_request,
    parent_engine,
    parent_plan,
    resolver,
    spawn_key,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["memory", "fs"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    if request.param == "memory":
        yield MemoryStore().stores
        return
    store = FsStore(tmp_path / "store")
    try:
        yield store.stores
    finally:
        store.close()


async def _start_parent(stores: Stores, factory: ChildRunFactory, fp: Failpoints | None = None) -> Any:
    manifest = make_manifest(PARENT_CONFIG, op_id="child_parent")
    mid = await store_manifest(stores, manifest)
    run = StartRun(
        manifest=manifest, manifest_id=mid, plan=parent_plan(), run_config=PARENT_CONFIG, initial_context=JsonContext()
    )
    return await parent_engine(factory, fp).start(stores, run, run_id=RunId(PARENT_ID))


def _linkage(envs: list[Any]) -> tuple[int, int]:
    names = [e.event.name for e in envs if isinstance(e.event, DomainEvent)]
    return names.count("child_run_spawned"), names.count("child_run_completed")


def _spawn_facts(envs: list[Any]) -> list[str]:
    return [
        e.event.payload["key"]
        for e in envs
        if isinstance(e.event, DomainEvent)
        and e.event.name == "fact_recorded"
        and e.event.payload["key"].startswith("child_parent:spawn|")
    ]


def _ctx(stores: Stores, run_id: str = PARENT_ID) -> TransportContext:
    return TransportContext(
        stores=stores, run_id=RunId(run_id), state_id=StateId(SPAWN), attempt=0, run_config=PARENT_CONFIG
    )


async def _replay_verdict(stores: Stores, run_id: str, new_id: str) -> Any:
    engine = Engine(plan_resolver=resolver, clock=FakeClock(), sleeper=FakeSleeper())
    return await engine.replay(stores, RunId(run_id), run_id=RunId(new_id))


# ------------------------------------------------------------------------------------------------ 85


async def test_m85_deterministic_child_id(stores: Stores) -> None:
    """85: child id = UUID v5(namespace P, name = key bytes); same inputs → same id (also through the wrapper)."""
    key = "child_parent:spawn|op:child_parent.main|i:0"
    expected = str(uuid.uuid5(uuid.UUID(PARENT_ID), key))
    assert expected == "d750e924-94ab-56de-9485-e993bd0188b1"  # pinned: a change of derivation shows here
    assert child_run_id(PARENT_ID, key) == expected == child_run_id(PARENT_ID, key)
    assert child_run_id(PARENT_ID, key.replace("i:0", "i:1")) != expected
    factory = child_factory(ProofFactory())
    first = await factory.make(_ctx(stores)).call_keyed(CHILD_RUN_SPAWN, child_request(0).model_dump(mode="json"), key)
    again = await factory.make(_ctx(stores)).call_keyed(CHILD_RUN_SPAWN, child_request(0).model_dump(mode="json"), key)
    assert first["child_run_id"] == again["child_run_id"] == expected
    assert factory.spawned == 1  # the second spawn found the child: at most one child per id
    await asyncio.gather(*factory.tasks.values())


async def test_m85_child_manifest_as_specified(stores: Stores) -> None:
    """85 (§16): the child manifest's shape, stored canonically; the response names its id and the initial snapshot."""
    req = ChildRunSpawnRequest(
        op_id="proof", op_version="0", op_config={"k": 1}, input={"i": 0}, run_config=CHILD_CONFIG
    )
    value = child_manifest(req).model_dump(mode="json")
    assert value["input_params"] == {
        "pipeline": {
            "machine_id": "proof",
            "pipeline_version": "0",
            "steps": [{"step_id": "main", "op_id": "proof", "op_version": "0", "op_config": {"k": 1}}],
        },
        "input": {"i": 0},
    }
    assert value["build"] == {
        "git_commit": None,
        "cargo_lock_hash": None,
        "flake_lock_hash": None,
        "rustc_version": None,
        "target_triple": None,
        "env_allowlist": [],
    }
    assert (
        value["op_id"] == "proof"
        and value["op_version"] == "0"
        and value["run_config"] == CHILD_CONFIG.model_dump(mode="json")
    )
    factory = child_factory(ProofFactory())
    resp = await factory.make(_ctx(stores)).call_keyed(CHILD_RUN_SPAWN, req.model_dump(mode="json"), "k")
    assert resp["child_manifest_id"] == artifact_id_for_json(value)
    assert await stores.artifacts.exists(ArtifactId(resp["child_manifest_id"]))
    assert await snapshot_of(stores, ArtifactId(resp["child_initial_snapshot_id"])) == {}
    assert resp["parent_run_id"] == PARENT_ID
    await asyncio.gather(*factory.tasks.values())


# ------------------------------------------------------------------------------------------------ 86


async def test_m86_wrapper_validates_requests(stores: Stores) -> None:
    """86: request {} → child_run_request_invalid; proof.read forwarded unchanged; no fact key → missing_fact_key."""
    inner = CountingFactory(group="proof")
    factory = ChildRunFactory([inner], plan_resolver=resolver, clock=FakeClock(), sleeper=FakeSleeper())
    transport = factory.make(_ctx(stores))
    with pytest.raises(IoError) as bad:
        await transport.call_keyed(CHILD_RUN_SPAWN, {}, "mfm:child-run:test")
    assert bad.value.code == "child_run_request_invalid"
    with pytest.raises(IoError) as bad_kind:
        await transport.call_keyed(CHILD_RUN_SPAWN, {**child_request(0).model_dump(mode="json"), "kind": "x"}, "k")
    assert bad_kind.value.code == "child_run_request_invalid"
    with pytest.raises(IoError) as bad_op:
        await transport.call_keyed(CHILD_RUN_SPAWN, {**child_request(0).model_dump(mode="json"), "op_id": "a b"}, "k")
    assert bad_op.value.code == "child_run_request_invalid"
    answer = await transport.call_keyed("proof.read", {"q": 1}, "some-key")
    assert inner.calls == [("proof.read", {"q": 1})] and answer is not None
    for ns in (CHILD_RUN_SPAWN, CHILD_RUN_AWAIT):
        with pytest.raises(IoError) as no_key:
            await transport.call(ns, child_request(0).model_dump(mode="json"))
        assert no_key.value.code == "missing_fact_key"
    assert factory.spawned == 0 and await stores.events.list_runs() == []


async def test_m86_secret_key_and_no_key_through_live_io(stores: Stores) -> None:
    """86 / §16: through Live IO, a secret-looking spawn key → secrets_detected, an unkeyed spawn → missing_fact_key;
    nothing is spawned."""
    seen: list[str] = []

    async def handler(ctx: Any, io: Any, rec: Any) -> None:
        body = child_request(0).model_dump(mode="json")
        for key in ("private_key:child", None):
            try:
                await io.call(IoCall(namespace=CHILD_RUN_SPAWN, request=body, fact_key=key))
            except IoError as exc:
                seen.append(exc.code)

    from engine.testing import make_plan, start_plan

    plan = make_plan([("s1", FnState(handler))])
    factory = child_factory(ProofFactory())
    engine = Engine(plan_resolver=lambda m: plan, transports=factory, clock=FakeClock(), sleeper=FakeSleeper())
    res = await start_plan(engine, stores, plan, CHILD_CONFIG)
    assert res.phase is RunPhase.COMPLETED
    assert seen == ["secrets_detected", "missing_fact_key"]
    assert factory.spawned == 0


async def test_m86_children_cannot_spawn_grandchildren(stores: Stores) -> None:
    """§16 UNCONFIRMED, decided: depth 1. A child's own spawn call fails child_run_depth_exceeded."""
    from engine.child_runs import spawn_child_run_v1
    from engine.errors import StateError

    codes: list[str] = []

    def nested_resolver(manifest: Any) -> Any:
        from engine.testing import make_plan

        async def grandparent_try(ctx: Any, io: Any, rec: Any) -> None:
            try:
                await spawn_child_run_v1(io, rec, "grandchild", child_request(9))
            except IoError as exc:
                codes.append(exc.code)
                raise StateError.new(exc.code, exc.message) from None

        if str(manifest.op_id) == "proof":
            return make_plan([("s1", FnState(grandparent_try))], op_id="proof")
        return parent_plan(1)

    factory = ChildRunFactory([ProofFactory()], plan_resolver=nested_resolver, clock=FakeClock(), sleeper=FakeSleeper())
    engine = Engine(plan_resolver=nested_resolver, transports=factory, clock=FakeClock(), sleeper=FakeSleeper())
    manifest = make_manifest(PARENT_CONFIG, op_id="child_parent")
    mid = await store_manifest(stores, manifest)
    res = await engine.start(
        stores,
        StartRun(
            manifest=manifest,
            manifest_id=mid,
            plan=parent_plan(1),
            run_config=PARENT_CONFIG,
            initial_context=JsonContext(),
        ),
        run_id=RunId(PARENT_ID),
    )
    assert res.phase is RunPhase.FAILED  # join saw the child Failed
    assert codes and set(codes) == {"child_run_depth_exceeded"}
    child = child_run_id(PARENT_ID, spawn_key(0))
    assert await stores.events.head_seq(child_run_id(child, "grandchild")) == 0


# ------------------------------------------------------------------------------------------------ 87


async def _check_tree(stores: Stores, proof: ProofFactory, final: ArtifactId | None) -> None:
    envs = await read_events(stores, RunId(PARENT_ID))
    assert _linkage(envs) == (2, 2)
    links = children_of(envs)
    assert [str(x.child_run_id) for x in links] == [child_run_id(PARENT_ID, spawn_key(i)) for i in range(2)]
    for i, link in enumerate(links):
        cenvs = await read_events(stores, link.child_run_id)
        rs, rc = cenvs[0].event, cenvs[-1].event
        assert isinstance(rs, RunStarted) and rs.manifest_id == link.child_manifest_id
        assert isinstance(rc, RunCompleted) and str(rc.status) == "Completed"
        assert rc.final_snapshot_id == link.final_snapshot_id and str(link.status) == "Completed"
        verdict = await _replay_verdict(stores, link.child_run_id, f"00000000-0000-4000-8000-00000000010{i}")
        assert verdict.deterministic and verdict.replay_final == rc.final_snapshot_id
    calls_before = list(proof.calls)
    verdict = await _replay_verdict(stores, PARENT_ID, "00000000-0000-4000-8000-000000000200")
    assert verdict.deterministic and verdict.replay_final == final
    assert proof.calls == calls_before  # the parent's replay did not re-execute a child
    assert (proof.count("proof.read"), proof.count("proof.side_effect"), proof.count("proof.output")) == (2, 2, 0)


async def test_m87_spawn_join_live_then_replay_across_tree(stores: Stores) -> None:
    """87 (AT-09): parent Completed; 2 spawned + 2 completed linkage; each child's RS/RC match the linkage; replays
    of each child and of the parent are deterministic; proof.read 2, proof.side_effect 2, proof.output 0."""
    proof = ProofFactory()
    factory = child_factory(proof)
    res = await _start_parent(stores, factory)
    assert res.phase is RunPhase.COMPLETED
    assert factory.spawned == 2
    await _check_tree(stores, proof, res.final_snapshot_id)


# ------------------------------------------------------------------------------------------------ 88


async def test_m88_parent_crash_after_spawn_children_still_running(stores: Stores) -> None:
    """88 (AT-10): children block in proof.side_effect; the parent stops after the spawn handler → Running, 2 spawn
    facts, each child has RS (initial snapshot {}) and no RC. Resume the parent, release → Completed, 2 + 2 linkage,
    each proof call once per child."""
    proof = ProofFactory(blocked=True)
    factory = child_factory(proof)
    first = await _start_parent(stores, factory, Failpoints.stop_after_handler(SPAWN))
    assert first.phase is RunPhase.RUNNING
    envs = await read_events(stores, RunId(PARENT_ID))
    assert _spawn_facts(envs) == [spawn_key(0), spawn_key(1)]
    for _ in range(200):
        if len(proof.blocked) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(proof.blocked) == 2
    for link in children_of(envs):
        cenvs = await read_events(stores, link.child_run_id)
        rs = cenvs[0].event
        assert isinstance(rs, RunStarted)
        assert await snapshot_of(stores, rs.initial_snapshot_id) == {}
        assert not any(isinstance(e.event, RunCompleted) for e in cenvs)
    spawned_payloads = [
        e.event.payload for e in envs if isinstance(e.event, DomainEvent) and e.event.name == "fact_recorded"
    ]
    for p in spawned_payloads:
        resp = await read_canonical_json(stores.artifacts, ArtifactId(p["payload_id"]))
        cenvs = await read_events(stores, RunId(resp["child_run_id"]))
        assert cenvs[0].event.initial_snapshot_id == resp["child_initial_snapshot_id"]
    resumed = asyncio.ensure_future(parent_engine(factory).resume(stores, RunId(PARENT_ID)))
    await asyncio.sleep(0.05)
    assert not resumed.done()
    proof.barrier.set()
    res = await resumed
    assert res.phase is RunPhase.COMPLETED
    assert factory.spawned == 2
    await _check_tree(stores, proof, res.final_snapshot_id)


# ------------------------------------------------------------------------------------------------ 89


async def test_m89_parent_crash_after_join(stores: Stores) -> None:
    """89 (AT-11): the parent stops after join_children's handler; resume → Completed; linkage 2 + 2 (not
    duplicated); proof calls once per child; the parent's replay reproduces the final id."""
    proof = ProofFactory()
    factory = child_factory(proof)
    first = await _start_parent(stores, factory, Failpoints.stop_after_handler(JOIN))
    assert first.phase is RunPhase.RUNNING
    assert _linkage(await read_events(stores, RunId(PARENT_ID))) == (2, 2)
    fresh = child_factory(proof)  # a new process would have a new supervisor
    res = await parent_engine(fresh).resume(stores, RunId(PARENT_ID))
    assert res.phase is RunPhase.COMPLETED
    assert fresh.spawned == 0
    await _check_tree(stores, proof, res.final_snapshot_id)


# ------------------------------------------------------------------------------------------------ 90


async def test_m90_child_conflict(stores: Stores) -> None:
    """90: a child stream with another manifest → child_run_conflict on spawn; await with a wrong manifest id →
    child_run_conflict; await of an id with an empty stream → child_run_missing_after_spawn."""
    factory = child_factory(ProofFactory())
    transport = factory.make(_ctx(stores))
    key = spawn_key(0)
    resp = await transport.call_keyed(CHILD_RUN_SPAWN, child_request(0).model_dump(mode="json"), key)
    await asyncio.gather(*factory.tasks.values())
    with pytest.raises(IoError) as conflict:
        await transport.call_keyed(CHILD_RUN_SPAWN, child_request(7).model_dump(mode="json"), key)
    assert conflict.value.code == "child_run_conflict"
    wrong = {"kind": "child_run_await_v1", "child_run_id": resp["child_run_id"], "child_manifest_id": "0" * 64}
    with pytest.raises(IoError) as await_conflict:
        await transport.call_keyed(CHILD_RUN_AWAIT, wrong, "await-0")
    assert await_conflict.value.code == "child_run_conflict"
    missing = {"kind": "child_run_await_v1", "child_run_id": str(uuid.uuid4()), "child_manifest_id": "0" * 64}
    with pytest.raises(IoError) as gone:
        await transport.call_keyed(CHILD_RUN_AWAIT, missing, "await-1")
    assert gone.value.code == "child_run_missing_after_spawn"
    ok = await transport.call_keyed(
        CHILD_RUN_AWAIT, {**wrong, "child_manifest_id": resp["child_manifest_id"]}, "await-0"
    )
    assert ok["status"] == "Completed" and ok["final_snapshot"]["output"]["receipt"]["answer"] == 42


async def test_m90_running_child_maps_to_failed(stores: Stores) -> None:
    """§16: a child that stops while Running is reported Failed by await (here: its handler's failpoint)."""
    factory = child_factory(ProofFactory())
    transport = factory.make(_ctx(stores))
    resp = await transport.call_keyed(CHILD_RUN_SPAWN, child_request(0).model_dump(mode="json"), spawn_key(0))
    task = factory.tasks.pop(RunId(resp["child_run_id"]))
    task.cancel()  # the child's process "died" mid-run: no task any more, its stream is unfinished
    await asyncio.gather(task, return_exceptions=True)
    stopper = Engine(
        plan_resolver=resolver,
        transports=[ProofFactory()],
        clock=FakeClock(),
        sleeper=FakeSleeper(),
        failpoints=Failpoints.stop_after_handler("proof.main.read_facts"),
    )
    factory.child_engine = stopper  # the synchronous resume stops as a crash would → phase Running
    body = {
        "kind": "child_run_await_v1",
        "child_run_id": resp["child_run_id"],
        "child_manifest_id": resp["child_manifest_id"],
    }
    out = await transport.call_keyed(CHILD_RUN_AWAIT, body, "await-0")
    assert out["status"] == "Failed"  # the child itself is still unfinished: Running maps to Failed
    cenvs = await read_events(stores, RunId(resp["child_run_id"]))
    assert not any(isinstance(e.event, RunCompleted) for e in cenvs)


# ------------------------------------------------------------------------------------------------ 88, 89 with SIGKILL


def _worker(store: Path, work: Path, action: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.engine.child_fixtures", str(store), str(work), action],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _wait_for(cond: Any, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    for _ in range(3000):
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"worker exited {proc.returncode} before {what}: {err[-2000:]}")
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _calls(work: Path) -> list[tuple[str, str]]:
    path = work / "calls.log"
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines()]  # type: ignore[misc]


async def _finish_by_resume(tmp_path: Path, store_path: Path, work: Path) -> None:
    (work / "release").touch()
    resume = _worker(store_path, work, "resume")
    await _wait_for(lambda: (work / "resume.done").exists(), "the resume", resume)
    assert resume.wait() == 0
    assert (work / "resume.done").read_text() == "Completed"
    store = FsStore(store_path)
    try:
        stores = store.stores
        envs = await read_events(stores, RunId(PARENT_ID))
        assert _linkage(envs) == (2, 2)
        children = [str(x.child_run_id) for x in children_of(envs)]
        assert children == [child_run_id(PARENT_ID, spawn_key(i)) for i in range(2)]
        calls = _calls(work)
        for child in children:
            assert sorted(ns for run, ns in calls if run == child) == ["proof.read", "proof.side_effect"]
            cenvs = await read_events(stores, RunId(child))
            assert str(cenvs[-1].event.status) == "Completed"  # type: ignore[union-attr]
        verdict = await _replay_verdict(stores, PARENT_ID, "00000000-0000-4000-8000-000000000300")
        assert verdict.deterministic
    finally:
        store.close()


async def test_m88_sigkill_worker_with_children_blocked(tmp_path: Path) -> None:
    """88 with a real worker: the parent's worker is SIGKILLed while both children block in proof.side_effect (their
    tasks die with it). The children are left resumable (RS, no RC); resuming the parent in a new worker joins them
    without spawning again: 2 + 2 linkage, each proof call completed once per child, the parent replay deterministic."""
    store_path, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    proc = _worker(store_path, work, "start")
    try:
        await _wait_for(lambda: len(list(work.glob("blocked-*"))) == 2, "both children to block", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    store = FsStore(store_path)
    try:
        envs = await read_events(store.stores, RunId(PARENT_ID))
        assert _spawn_facts(envs) == [spawn_key(0), spawn_key(1)]
        assert not any(isinstance(e.event, RunCompleted) for e in envs)
        for i in range(2):
            cenvs = await read_events(store.stores, child_run_id(PARENT_ID, spawn_key(i)))
            assert isinstance(cenvs[0].event, RunStarted)
            assert not any(isinstance(e.event, RunCompleted) for e in cenvs)
    finally:
        store.close()
    await _finish_by_resume(tmp_path, store_path, work)


async def test_m89_sigkill_worker_after_join(tmp_path: Path) -> None:
    """89 with a real worker: the failpoint stops the parent after join_children's handler and the worker is
    SIGKILLed; resuming in a new worker completes with linkage 2 + 2 (not duplicated) and one call per child."""
    store_path, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    (work / "release").touch()
    proc = _worker(store_path, work, "start-stop-after-join")
    try:
        await _wait_for(lambda: (work / "start-stop-after-join.done").exists(), "the failpoint", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (work / "start-stop-after-join.done").read_text() == "Running"
    await _finish_by_resume(tmp_path, store_path, work)
