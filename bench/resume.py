"""Resume cost on the filesystem store for long histories: prints figures, asserts nothing.

    python bench/resume.py [--dir DIR] [--sizes 1000,10000,100000] [--profile SIZE]

For each size, a run's history is written straight through the store (valid envelopes in batches of 1000, one
fsync per batch): ``RunStarted``, then for every state but the last ``StateEntered``, about 100 domain events (one
in ten a ``fact_recorded``), ``StateCompleted``. The last state is still to do, so ``Engine.resume`` reads and
decodes the whole stream, rebuilds the fact index, analyses it (§13), loads the manifest and checkpoint, runs the
last state and appends ``StateEntered``, ``StateCompleted`` and ``RunCompleted``. Timed end to end with a fresh
``FsStore`` object (nothing cached in the process; the OS page cache is warm, as after a crash of the worker but
not of the machine), best of a few runs; then the phases: ``read_range`` (read + decode), fact index rebuild,
attempt-envelope analysis. Goal: ≤ 10 µs per event end to end. Between the resumes it measures a floor, orjson
parsing every envelope's wire bytes, and prints the resume's CPU as a ratio of it (comparable under load).

``--profile SIZE`` prints the top of a cProfile of one resume of that size instead.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import bench_dir
from engine._kinds import ArtifactKind
from engine._runtime.executor import load_history
from engine._runtime.facts import FactIndex
from engine.context import DynContext
from engine.events import DomainEvent, EventEnvelope, RunStarted, StateCompleted, StateEntered, encode_envelope
from engine.hashing import canonical_json_bytes
from engine.ids import RunId
from engine.io import IoProvider
from engine.meta import StateMeta
from engine.plan import ExecutionPlan
from engine.recorder import EventRecorder
from engine.runtime import Engine
from engine.state import StateOutcome
from engine.stores.fs import FsStore
from engine.testing import base_config, make_manifest, make_plan, sid, store_manifest

EVENTS_PER_STATE = 100
BATCH = 1000
GOAL_US = 10.0
CONTEXT = {f"key_{i:03d}": {"name": f"value number {i}", "n": i, "tags": ["a", "b"]} for i in range(40)}


class Write:
    def __init__(self, i: int) -> None:
        self.i = i

    def meta(self) -> StateMeta:
        return StateMeta()

    async def handle(self, ctx: DynContext, io: IoProvider, rec: EventRecorder) -> StateOutcome:
        ctx.write("last", self.i)
        return StateOutcome()


def chain(n: int) -> ExecutionPlan:
    return make_plan([(f"s{i}", Write(i)) for i in range(n)], [(f"s{i}", f"s{i + 1}") for i in range(n - 1)])


async def write_history(
    store: FsStore, run: RunId, events: int, wire: list[bytes] | None = None
) -> tuple[ExecutionPlan, int]:
    """A history of about ``events`` envelopes whose last state is still to do; returns (plan, head). ``wire``
    receives each envelope's wire bytes."""
    states = max(2, events // EVENTS_PER_STATE + 1)
    plan = chain(states)
    manifest_id = await store_manifest(store.stores, make_manifest(base_config(), op_id=str(plan.op_id)))
    snap = await store.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, canonical_json_bytes(CONTEXT))
    fact_payload = await store.artifacts.put(ArtifactKind.FACT_PAYLOAD, canonical_json_bytes({"ok": 1}))
    body: list[Any] = [RunStarted(op_id=plan.op_id, manifest_id=manifest_id, initial_snapshot_id=snap)]
    per_state = max(1, (events - 1) // (states - 1))
    for s in range(states - 1):
        state = sid(f"s{s}")
        body.append(StateEntered(state_id=state, attempt=0, base_snapshot_id=snap))
        for k in range(per_state - 2):
            if k % 10 == 0:
                payload: dict[str, Any] = {"key": f"bench:{s}:{k}", "payload_id": str(fact_payload), "meta": {}}
                body.append(DomainEvent(name="fact_recorded", payload=payload))
            else:
                body.append(DomainEvent(name="progress", payload={"state": s, "step": k, "note": "working"}))
        body.append(StateCompleted(state_id=state, context_snapshot_id=snap))
    head = 0
    for start in range(0, len(body), BATCH):
        batch = [
            EventEnvelope(run_id=run, seq=head + 1 + i, ts_millis=1_760_000_000_000 + head + i, event=ev)
            for i, ev in enumerate(body[start : start + BATCH])
        ]
        head = await store.events.append(run, head, batch)
        if wire is not None:
            wire.extend(encode_envelope(env) for env in batch)
    return plan, head


def floor_cpu(wire: list[bytes]) -> float:
    """CPU seconds of the least a resume must do per event: parse its JSON (orjson). Best of 3."""
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for line in wire:
            orjson.loads(line)
        best = min(best, time.process_time() - t0)
    return best


async def resume_once(root: Path, run: RunId, plan: ExecutionPlan) -> tuple[float, float]:
    """(wall s, CPU s) of one resume through a fresh FsStore object."""
    store = FsStore(root)
    engine = Engine(plan_resolver=lambda manifest: plan)
    t0, c0 = time.perf_counter(), time.process_time()
    result = await engine.resume(store.stores, run)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert str(result.phase) == "Completed", result
    store.close()
    return elapsed, cpu


async def phases(root: Path, run: RunId) -> dict[str, float]:
    """The first steps of resume, timed apart (fresh store object): §13 steps 1-4, then the fact index."""
    store = FsStore(root)
    t0 = time.perf_counter()
    await store.events.head_seq(run)
    t1 = time.perf_counter()
    envs, _ = await load_history(store.stores, run)
    t2 = time.perf_counter()
    FactIndex.rebuild(envs)
    t3 = time.perf_counter()
    store.close()
    return {
        "head_seq (first scan of the file)": t1 - t0,
        "load_history (read + decode + analysis)": t2 - t1,
        "fact index rebuild": t3 - t2,
    }


async def bench_size(base: Path, size: int, repeats: int) -> None:
    times: list[float] = []
    cpus: list[float] = []
    floors: list[float] = []
    head = 0
    for r in range(repeats):
        root = base / f"store-{size}-{r}"
        run = RunId.new_v4()
        wire: list[bytes] = []
        plan, head = await write_history(FsStore(root), run, size, wire)
        floors.append(floor_cpu(wire))
        if r == 0:
            parts = await phases(root, run)
        wall, cpu = await resume_once(root, run, plan)
        times.append(wall)
        cpus.append(cpu)
    best = min(times)
    per_event = best / head * 1e6
    verdict = "met" if per_event <= GOAL_US else "NOT met"
    print(
        f"{head:>7} events: resume {best * 1000:8.1f} ms wall (best of {repeats}: "
        f"{'/'.join(f'{t * 1000:.0f}' for t in times)} ms), {per_event:5.2f} µs per event (goal ≤ {GOAL_US:.0f}: "
        f"{verdict}); CPU {min(cpus) / head * 1e6:5.2f} µs per event"
    )
    print("         " + ", ".join(f"{name} {t / head * 1e6:.2f} µs/event" for name, t in parts.items()))
    floor = min(floors)
    print(
        f"         floor (orjson.loads of every envelope, measured between the resumes) {floor / head * 1e6:.2f} "
        f"µs/event: resume CPU {min(cpus) / floor:.1f}× the floor"
    )


async def main(base: str | None, sizes: list[int]) -> None:
    with bench_dir("mfm-resume-", base) as d:
        print(f"fs store in {d}; about {EVENTS_PER_STATE} events per state, one in ten a fact_recorded")
        for size in sizes:
            await bench_size(d, size, 3 if size <= 10_000 else 2)


def profile(base: str | None, size: int) -> None:
    import cProfile
    import pstats

    async def prepare(d: Path) -> tuple[Path, RunId, ExecutionPlan]:
        run = RunId.new_v4()
        plan, _ = await write_history(FsStore(d / "store"), run, size)
        return d / "store", run, plan

    with bench_dir("mfm-resume-prof-", base) as d:
        root, run, plan = asyncio.run(prepare(d))
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(resume_once(root, run, plan))
        prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="scratch directory base (default $MFM_BENCH_DIR or the system temp dir)")
    parser.add_argument("--sizes", default="1000,10000,100000", help="history sizes in events")
    parser.add_argument("--profile", type=int, metavar="SIZE", help="cProfile one resume of SIZE events instead")
    args = parser.parse_args()
    if args.profile:
        profile(args.dir, args.profile)
    else:
        asyncio.run(main(args.dir, [int(s) for s in args.sizes.split(",")]))
