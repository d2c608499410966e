"""What the runtime costs on top of the storage it needs: prints figures, asserts nothing.

    python bench/engine_overhead.py [--dir DIR] [-n STATES] [--rounds R] [--no-dbos]

1. A durable no-op state on the filesystem store: a sequential run of N states (each writes one key, so every state
   appends its ``StateEntered``, stores a new context snapshot and appends its ``StateCompleted``, as the contract
   requires), wall time per state, and the syncs it issued. Against, measured in the same run in the same directory
   (rounds interleaved with the engine's): the append+fdatasync floor (one 300-byte ``write`` + ``fdatasync``) and
   the raw durable IO of one state (two such appends and one atomic 2.5 KB write: temp file, fsync, rename,
   directory fsync). Goal: ≤ 2.5× the floor.
2. CPU per state on the memory store with a 2.5 KB context (``bench/runtime_per_state.py``; goal ≤ 100 µs).
3. DBOS (``pip install dbos``): a workflow of N no-op ``@DBOS.step`` calls on SQLite (the system database in the
   same directory), wall time per step, and its ratio to our durable state (goal: ours ≥ 4× faster per step).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import append_fsync_floor, atomic_write_floor, bench_dir
from bench.runtime_per_state import chain, context, one_run
from engine.hashing import canonical_json_bytes
from engine.runtime import Engine
from engine.stores.fs import FsOps, FsStore
from engine.testing import base_config, fixed_run_ids, start_plan

FLOOR_GOAL = 2.5
CPU_GOAL_US = 100.0
DBOS_GOAL = 4.0


class CountingOps(FsOps):
    """The filesystem seam, counting the syncs the store issues and the time they take."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs = 0
        self.fsync_s = 0.0  # fsync: directories (new entries made durable)
        self.fdatasync_s = 0.0  # fdatasync: event appends and blob contents

    @property
    def sync_s(self) -> float:
        return self.fsync_s + self.fdatasync_s

    def fsync(self, fd: int) -> None:
        self.syncs += 1
        t0 = time.perf_counter()
        super().fsync(fd)
        self.fsync_s += time.perf_counter() - t0

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1
        t0 = time.perf_counter()
        super().fdatasync(fd)
        self.fdatasync_s += time.perf_counter() - t0


@dataclass(frozen=True, slots=True)
class EngineRound:
    """Per state: wall, user CPU and system CPU time (µs), syncs, µs in fsync / fdatasync; and the run's phase."""

    wall: float
    user: float
    system: float
    syncs: float
    fsync: float
    fdatasync: float
    phase: str


def engine_round(d: Path, n: int) -> EngineRound:
    """One run of ``n`` states on a fresh FsStore."""
    ops = CountingOps()
    store = FsStore(d, ops=ops)
    plan = chain(n)
    engine = Engine(run_ids=fixed_run_ids())

    async def go() -> str:
        result = await start_plan(engine, store.stores, plan, base_config(), context())
        return str(result.phase)

    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    phase = asyncio.run(go())
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    store.close()
    k = 1e6 / n
    user, system = (r1.ru_utime - r0.ru_utime) * k, (r1.ru_stime - r0.ru_stime) * k
    return EngineRound(wall * k, user, system, ops.syncs / n, ops.fsync_s * k, ops.fdatasync_s * k, phase)


def floor_round(d: Path, n: int, snapshot_size: int) -> tuple[float, float]:
    """``n`` times the raw IO of one state: (µs per append+fdatasync, µs per state = 2 appends + 1 atomic write)."""
    d.mkdir(parents=True, exist_ok=True)
    append, close = append_fsync_floor(d, 300)
    write = atomic_write_floor(d / "floor-blobs", snapshot_size)
    t0 = time.perf_counter()
    for _ in range(n):
        append()
    one = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for _ in range(n):
        append()
        write()
        append()
    state = (time.perf_counter() - t0) / n * 1e6
    close()
    return one, state


def durable_state(base: str | None, n: int, rounds: int) -> tuple[float, float]:
    """Print section 1; return (wall µs, CPU µs) per durable state.

    Each engine round is followed by a floor round in the same directory; ratios are taken per round (so both
    sides of a ratio saw the same disk contention) and the median ratio is reported.
    """
    snapshot_size = len(canonical_json_bytes(context()))
    engine: list[EngineRound] = []
    append_us: list[float] = []
    state_floor_us: list[float] = []
    with bench_dir("mfm-overhead-", base) as d:
        print(f"1. durable no-op state on the fs store: {n} states × {rounds} rounds in {d}")
        for r in range(rounds):
            engine.append(engine_round(d / f"store-{r}", n))
            one, state = floor_round(d / f"floor-{r}", n, snapshot_size)
            append_us.append(one)
            state_floor_us.append(state)
    walls = [e.wall for e in engine]
    eng = statistics.median(walls)
    cpu = min(engine, key=lambda e: e.user + e.system)
    r_one = [e.wall / f for e, f in zip(engine, append_us, strict=True)]
    r_state = [e.wall / f for e, f in zip(engine, state_floor_us, strict=True)]
    print(f"   engine: {eng:8.0f} µs wall per state (median; rounds {_fmt(walls)}), runs {engine[-1].phase}")
    print(f"           {cpu.user:8.0f} µs user + {cpu.system:.0f} µs system CPU per state (best round)")
    last = engine[-1]
    print(
        f"           {last.syncs:.2f} syncs per state through the store's seam (last round: {last.fdatasync:.0f} µs in"
        f" fdatasync of appends and blobs, {last.fsync:.0f} µs in fsync of directories)"
    )
    print(f"   floor:  {statistics.median(append_us):8.0f} µs per 300 B append+fdatasync (rounds {_fmt(append_us)})")
    print(
        f"           {statistics.median(state_floor_us):8.0f} µs per state's raw IO: 2 appends + 1 atomic"
        f" {snapshot_size} B write (rounds {_fmt(state_floor_us)})"
    )
    write_us = [st - 2 * one for st, one in zip(state_floor_us, append_us, strict=True)]
    print(
        f"           of which the atomic write of a new file ≈ {statistics.median(write_us):.0f} µs ({_fmt(write_us)})"
    )
    ratio = statistics.median(r_one)
    print(
        f"   ratio:  {ratio:.2f}× the append+fdatasync floor (median of per-round ratios {_fmt(r_one, 2)};"
        f" goal ≤ {FLOOR_GOAL}×: {_met(ratio <= FLOOR_GOAL)})"
    )
    print(f"           {statistics.median(r_state):.2f}× the raw IO one durable state needs ({_fmt(r_state, 2)})")
    return eng, cpu.user + cpu.system


def cpu_per_state(n: int) -> None:
    async def best() -> tuple[float, int]:
        plan, ctx = chain(n), context()
        runs = [await one_run(plan, ctx) for _ in range(15)]
        return min(cpu for cpu, _, _ in runs), runs[-1][1]

    cpu, appends = asyncio.run(best())
    us = cpu / n * 1e6
    size = len(canonical_json_bytes(context()))
    print(f"2. CPU per state, memory store, {size} B context, best of 15 runs of {n} states ({appends} appends):")
    print(f"   {us:.1f} µs CPU per state (goal ≤ {CPU_GOAL_US:.0f} µs: {_met(us <= CPU_GOAL_US)})")


def dbos_per_step(base: str | None, n: int, rounds: int, ours_us: float, ours_cpu: float) -> None:
    print(f"3. DBOS workflow of {n} no-op steps on SQLite:")
    try:
        from dbos import DBOS
    except ImportError as exc:
        print(f"   skipped: dbos is not installed ({exc}); `pip install dbos` to compare")
        return
    import importlib.metadata

    version = importlib.metadata.version("dbos")
    with bench_dir("mfm-dbos-", base) as d:
        DBOS(config={"name": "mfm-bench", "system_database_url": f"sqlite:///{d}/dbos.sqlite", "log_level": "ERROR"})

        @DBOS.step()
        def noop(i: int) -> int:
            return i

        @DBOS.workflow()
        def workflow(count: int) -> int:
            total = 0
            for i in range(count):
                total += noop(i)
            return total

        run: Callable[[int], int] = workflow
        DBOS.launch()
        try:
            run(5)  # warm-up: schema, connections
            per_step, cpu_step = [], []
            for _ in range(rounds):
                t0, c0 = time.perf_counter(), time.process_time()
                run(n)
                per_step.append((time.perf_counter() - t0) / n * 1e6)
                cpu_step.append((time.process_time() - c0) / n * 1e6)
        finally:
            DBOS.destroy()
    us = statistics.median(per_step)
    ratio = us / ours_us
    print(f"   dbos {version}: {us:8.0f} µs wall per step (median of rounds {_fmt(per_step)}), {d}")
    print(
        f"   ours: {ours_us:8.0f} µs per durable state → ours is {ratio:.2f}× faster (goal ≥ {DBOS_GOAL}×:"
        f" {_met(ratio >= DBOS_GOAL)})"
    )
    cpu = min(cpu_step)
    print(
        f"   CPU:  dbos {cpu:8.0f} µs per step (best round, all its threads), ours {ours_cpu:8.0f} µs per durable"
        f" state (user + system) → ours uses {cpu / ours_cpu:.2f}× less CPU"
    )


def _fmt(values: list[float], digits: int = 0) -> str:
    return "/".join(f"{v:.{digits}f}" for v in values)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="scratch directory base (default $MFM_BENCH_DIR or the system temp dir)")
    parser.add_argument("-n", type=int, default=200, help="states (and DBOS steps) per run (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement (default 3)")
    parser.add_argument("--no-dbos", action="store_true", help="skip the DBOS comparison")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    ours, ours_cpu = durable_state(args.dir, args.n, args.rounds)
    cpu_per_state(args.n)
    if args.no_dbos:
        print("3. DBOS comparison skipped (--no-dbos)")
    else:
        dbos_per_step(args.dir, args.n, args.rounds, ours, ours_cpu)


if __name__ == "__main__":
    main()
