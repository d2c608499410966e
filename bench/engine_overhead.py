"""What the runtime costs on top of the storage it needs: prints figures, asserts nothing.

    python bench/engine_overhead.py [--dir DIR] [-n STATES] [--rounds R] [--no-dbos] [--dbos-python PY]

1. A durable no-op state on the filesystem store: a sequential run of N states (each writes one key, so every state
   makes a new context snapshot durable and its events, as the contract requires), wall time per state, and the
   syncs issued: every ``os.fsync`` / ``os.fdatasync`` call of this process during the engine's rounds is counted
   (the functions are wrapped, whatever path the store takes to them: the unit of work of format v2 or the
   put-then-append fallback of a store without one; the line says which). Against, measured in the same run in
   the same directory (rounds interleaved with the engine's): the append+fdatasync floor (one 300-byte ``write``
   + ``fdatasync``). Goals (issue 12): ≤ 1.5× the floor, ≤ 1.05 syncs per state.
2. CPU per state on the memory store with a 2.5 KB context (``bench/runtime_per_state.py``; goal ≤ 50 µs), and the
   fs store's own share: section 1's CPU minus this, and (without the disk's kernel work) the same run on the fs
   store with ``fsync``/``fdatasync`` made no-ops minus the memory store, best of 7 each.
3. DBOS 3.x: a workflow of N no-op ``@DBOS.step`` calls on SQLite (the system database in the same directory),
   run by ``bench/dbos_steps.py`` in DBOS's OWN virtualenv (never a project dependency:
   ``python -m venv /tmp/dbos-venv && /tmp/dbos-venv/bin/pip install dbos``), wall time per step, and our speed
   ÷ DBOS's (goal: ours ≥ 5× faster per step). Without that venv the section says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import append_fsync_floor, atomic_write_floor, bench_dir
from bench.runtime_per_state import chain, context, one_run
from engine.engine import Stores
from engine.hashing import canonical_json_bytes
from engine.runtime import Engine
from engine.stores import MemoryStore, paired_unit_of_work
from engine.stores.fs import FsOps, FsStore
from engine.testing import FakeClock, FakeSleeper, base_config, fixed_run_ids, start_plan

FLOOR_GOAL = 1.5
SYNCS_GOAL = 1.05
CPU_GOAL_US = 50.0
DBOS_GOAL = 5.0
DBOS_PYTHON = "/tmp/dbos-venv/bin/python"


class SyncCounter:
    """Counts and times every ``os.fsync`` / ``os.fdatasync`` call of this process while active (a context
    manager): what a store does, whichever seam or module it calls them through."""

    def __init__(self) -> None:
        self.fsyncs = 0
        self.fdatasyncs = 0
        self.fsync_s = 0.0  # fsync: directories (new entries made durable), files
        self.fdatasync_s = 0.0  # fdatasync: appends and blob contents

    @property
    def syncs(self) -> int:
        return self.fsyncs + self.fdatasyncs

    def __enter__(self) -> SyncCounter:
        self._saved = os.fsync, os.fdatasync
        real_fsync, real_fdatasync = self._saved

        def fsync(fd: int) -> None:
            self.fsyncs += 1
            t0 = time.perf_counter()
            real_fsync(fd)
            self.fsync_s += time.perf_counter() - t0

        def fdatasync(fd: int) -> None:
            self.fdatasyncs += 1
            t0 = time.perf_counter()
            real_fdatasync(fd)
            self.fdatasync_s += time.perf_counter() - t0

        os.fsync, os.fdatasync = fsync, fdatasync
        return self

    def __exit__(self, *exc: object) -> None:
        os.fsync, os.fdatasync = self._saved


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
    store = FsStore(d)
    plan = chain(n)
    engine = Engine(run_ids=fixed_run_ids())

    async def go() -> str:
        result = await start_plan(engine, store.stores, plan, base_config(), context())
        return str(result.phase)

    with SyncCounter() as syncs:
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        phase = asyncio.run(go())
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    store.close()
    k = 1e6 / n
    user, system = (r1.ru_utime - r0.ru_utime) * k, (r1.ru_stime - r0.ru_stime) * k
    return EngineRound(wall * k, user, system, syncs.syncs / n, syncs.fsync_s * k, syncs.fdatasync_s * k, phase)


def store_path_label(d: Path) -> str:
    """Which path a step's blobs take on this FsStore: its unit of work, or put-then-append."""
    store = FsStore(d)
    try:
        unit = paired_unit_of_work(store.events, store.artifacts) is not None
    finally:
        store.close()
    return "unit of work (one commit per state)" if unit else "no unit of work: put each blob, then append"


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
        print(f"   store path: {store_path_label(d / 'probe')}")
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
    syncs = statistics.median(e.syncs for e in engine)
    print(
        f"           {syncs:.2f} syncs per state, os.fsync + os.fdatasync calls (goal ≤ {SYNCS_GOAL}:"
        f" {_met(syncs <= SYNCS_GOAL)}; last round: {last.fdatasync:.0f} µs per state in fdatasync,"
        f" {last.fsync:.0f} µs in fsync)"
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


class _NoSync(FsOps):
    """The fs store with ``fsync``/``fdatasync`` made no-ops: its own CPU, without the disk's."""

    def fdatasync(self, fd: int) -> None:
        pass

    def fsync(self, fd: int) -> None:
        pass


def store_cpu_share(base: str | None, n: int, repeats: int = 7) -> None:
    """Print the fs store's own CPU per state: best-of runs on the fs store (syncs made no-ops) and on the memory
    store, same plan, same fake clock, interleaved; the difference is what the fs store costs on top."""
    plan, ctx = chain(n), context()

    async def one(stores: Stores) -> float:
        engine = Engine(clock=FakeClock(), sleeper=FakeSleeper(), run_ids=fixed_run_ids())
        t0 = time.process_time()
        await start_plan(engine, stores, plan, base_config(), ctx)
        return time.process_time() - t0

    fs: list[float] = []
    mem: list[float] = []
    with bench_dir("mfm-share-", base) as d:
        for r in range(repeats):
            store = FsStore(d / f"store-{r}", ops=_NoSync())
            fs.append(asyncio.run(one(store.stores)))
            store.close()
            mem.append(asyncio.run(one(MemoryStore().stores)))
    f, m = min(fs) / n * 1e6, min(mem) / n * 1e6
    print(f"   without the disk (fsync/fdatasync no-ops), best of {repeats} runs of {n} states:")
    print(f"           fs store {f:.0f} µs − memory store {m:.0f} µs = {f - m:.0f} µs CPU per state (the fs store's)")


def cpu_per_state(n: int) -> float:
    async def best() -> tuple[float, int]:
        plan, ctx = chain(n), context()
        runs = [await one_run(plan, ctx) for _ in range(15)]
        return min(cpu for cpu, _, _ in runs), runs[-1][1]

    cpu, appends = asyncio.run(best())
    us = cpu / n * 1e6
    size = len(canonical_json_bytes(context()))
    print(f"2. CPU per state, memory store, {size} B context, best of 15 runs of {n} states ({appends} appends):")
    print(f"   {us:.1f} µs CPU per state (goal ≤ {CPU_GOAL_US:.0f} µs: {_met(us <= CPU_GOAL_US)})")
    return us


def dbos_per_step(base: str | None, n: int, rounds: int, ours_us: float, ours_cpu: float, python: str) -> None:
    print(f"3. DBOS workflow of {n} no-op steps on SQLite, in its own venv ({python}):")
    if not Path(python).exists():
        print(
            f"   not measured: {python} does not exist. Create it with `python -m venv /tmp/dbos-venv &&"
            " /tmp/dbos-venv/bin/pip install dbos` (needs the package index; DBOS is never a project dependency)"
        )
        return
    script = Path(__file__).resolve().parent / "dbos_steps.py"
    with bench_dir("mfm-dbos-", base) as d:
        proc = subprocess.run(
            [python, str(script), str(d), str(n), str(rounds)], capture_output=True, text=True, check=False
        )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"   not measured: the DBOS run failed ({tail}); is dbos installed in that venv (offline?)")
        return
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    per_step, cpu_step = got["per_step_us"], got["cpu_step_us"]
    us = statistics.median(per_step)
    ratio = us / ours_us
    print(f"   dbos {got['version']}: {us:8.0f} µs wall per step (median of rounds {_fmt(per_step)})")
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
    parser.add_argument("--dbos-python", default=DBOS_PYTHON, help=f"DBOS's venv Python (default {DBOS_PYTHON})")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    ours, ours_cpu = durable_state(args.dir, args.n, args.rounds)
    memory_cpu = cpu_per_state(args.n)
    print(
        f"   the fs store's own share: {ours_cpu:.0f} µs (section 1, user + system) − {memory_cpu:.0f} µs"
        f" = {ours_cpu - memory_cpu:.0f} µs CPU per durable state (its commit, fdatasync's kernel work, summary fold)"
    )
    store_cpu_share(args.dir, args.n)
    if args.no_dbos:
        print("3. DBOS comparison skipped (--no-dbos)")
    else:
        dbos_per_step(args.dir, args.n, args.rounds, ours, ours_cpu, args.dbos_python)


if __name__ == "__main__":
    main()
