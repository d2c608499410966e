"""CPU cost of one durable no-op state on the memory store with a 2.5 KB context: prints figures, asserts nothing.

    python bench/runtime_per_state.py [-n STATES] [-r REPEATS] [--profile]

A sequential run of N states, each writing one small key into a context of about 2.5 KB (40 entries), on a fresh
``MemoryStore`` with a fake clock; best process-CPU time of the repeats, divided by N (goal ≤ 50 µs per state:
issue 12). Between the runs it measures a floor, the stdlib's sorted ``json.dumps`` and SHA-256 of the context per
state, and prints the ratio (comparable between loaded and quiet machines).
``--profile`` prints the top of a cProfile of one run instead.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.context import DynContext
from engine.engine import RunResult
from engine.hashing import canonical_json_bytes
from engine.io import IoProvider
from engine.meta import StateMeta
from engine.plan import ExecutionPlan
from engine.recorder import EventRecorder
from engine.runtime import Engine
from engine.state import StateOutcome
from engine.stores import MemoryStore
from engine.testing import FakeClock, FakeSleeper, base_config, fixed_run_ids, make_plan, start_plan

GOAL_US = 50.0  # issue 12


def context() -> dict[str, Any]:
    """About 2.5 KB of canonical JSON."""
    return {f"key_{i:03d}": {"name": f"value number {i}", "n": i, "tags": ["a", "b"]} for i in range(40)}


class Write:
    """A no-op state that writes ``out_<i % 10> = i``. Its ``meta()`` returns a ``StateMeta`` built once, as the states
    of ``engine.testing`` do: validating a new pydantic model at every call (about 5 % of the figure before) is the
    state's own cost, not the engine's (the engine asks each state's meta once per run)."""

    def __init__(self, i: int) -> None:
        self.i = i
        self._meta = StateMeta()

    def meta(self) -> StateMeta:
        return self._meta

    async def handle(self, ctx: DynContext, io: IoProvider, rec: EventRecorder) -> StateOutcome:
        ctx.write(f"out_{self.i % 10}", self.i)
        return StateOutcome()


def chain(n: int) -> ExecutionPlan:
    return make_plan([(f"s{i}", Write(i)) for i in range(n)], [(f"s{i}", f"s{i + 1}") for i in range(n - 1)])


async def one_run(plan: ExecutionPlan, ctx: dict[str, Any]) -> tuple[float, int, RunResult]:
    ms = MemoryStore()
    engine = Engine(clock=FakeClock(), sleeper=FakeSleeper(), run_ids=fixed_run_ids())
    t0 = time.process_time()
    result = await start_plan(engine, ms.stores, plan, base_config(), ctx)
    return time.process_time() - t0, engine.appends, result


def floor(n: int, ctx: dict[str, Any]) -> float:
    """CPU of the least a durable state's snapshot needs, ``n`` times: the context as sorted compact JSON (stdlib
    ``json``) and its SHA-256. Measured between the runs, so load on the machine weighs on both alike."""
    t0 = time.process_time()
    for i in range(n):
        ctx[f"out_{i % 10}"] = i
        hashlib.sha256(json.dumps(ctx, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return time.process_time() - t0


async def main(n: int, repeats: int) -> None:
    plan, ctx = chain(n), context()
    best, best_floor, appends = float("inf"), float("inf"), 0
    for _ in range(repeats):
        best_floor = min(best_floor, floor(n, dict(ctx)))
        cpu, appends, result = await one_run(plan, ctx)
        best = min(best, cpu)
    per_state, per_floor = best / n * 1e6, best_floor / n * 1e6
    verdict = "met" if per_state <= GOAL_US else "NOT met"
    print(f"context {len(canonical_json_bytes(ctx))} B, {n} states, best of {repeats} runs ({result.phase})")
    print(f"per state {per_state:.1f} µs CPU, appends {appends} (goal ≤ {GOAL_US:.0f} µs: {verdict})")
    print(f"floor (json.dumps + sha256 of the context) {per_floor:.1f} µs: ratio {per_state / per_floor:.2f}")


def profile(n: int) -> None:
    import cProfile
    import pstats

    plan, ctx = chain(n), context()
    asyncio.run(one_run(plan, ctx))  # warm caches
    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(one_run(plan, ctx))
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200, help="states per run (default 200)")
    parser.add_argument("-r", type=int, default=15, help="runs; the best CPU time counts (default 15)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one run instead")
    args = parser.parse_args()
    if args.profile:
        profile(args.n)
    else:
        asyncio.run(main(args.n, args.r))
