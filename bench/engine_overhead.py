"""What the runtime costs on top of the storage it needs: prints figures, asserts nothing.

    python bench/engine_overhead.py [--dir DIR] [-n STATES] [--rounds R] [--no-dbos] [--dbos-python PY]

1. A durable no-op state on the filesystem store: a sequential run of N states (each writes one key, so every state
   makes a new context snapshot durable and its events, as the contract requires), wall time per state, and the
   syncs issued: every ``os.fsync`` / ``os.fdatasync`` call of this process during the engine's rounds is counted
   (the functions are wrapped, whatever path the store takes to them: the unit of work of format v2 or the
   put-then-append fallback of a store without one; the line says which). Against, measured in the same run in
   the same directory (rounds interleaved with the engine's): the append+fdatasync floor (one 300-byte ``write``
   + ``fdatasync``). Goals (issue 12): ≤ 1.5× the floor, ≤ 1.05 syncs per state.
   Then where the wall time goes: a census round (not timed; every call of the os/fcntl functions the store uses
   is counted, and the bytes each ``write`` puts in each file) gives the syscalls per state by kind; the timed
   rounds give the time in ``fdatasync`` against the floor's own ``fdatasync``, and more floors in the same
   directory, interleaved, isolate the IO pattern: an append of the engine's bytes per state (the size of the
   write), and that plus the change-journal line in a second file (does its metadata ride on the next
   ``fdatasync``?). The wall per state is split into: the floor's fdatasync, the extra fdatasync time of the
   engine's write, the process's CPU outside the syncs, and the rest (off-CPU: run queue, other waits).
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
import collections
import fcntl
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class _SleepSync(FsOps):
    """``fdatasync`` replaced by a sleep of the same length as the floor's: blocking without the IO (a control)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def fdatasync(self, fd: int) -> None:
        time.sleep(self.seconds)


def engine_round(d: Path, n: int, ops: FsOps | None = None) -> EngineRound:
    """One run of ``n`` states on a fresh FsStore (``ops``: the store's syscall seam, default the real one)."""
    store = FsStore(d) if ops is None else FsStore(d, ops=ops)
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


_CENSUS = (
    ("os", "open"),
    ("os", "close"),
    ("os", "write"),
    ("os", "pwrite"),
    ("os", "read"),
    ("os", "pread"),
    ("os", "fstat"),
    ("os", "stat"),
    ("os", "lseek"),
    ("os", "ftruncate"),
    ("os", "fdatasync"),
    ("os", "fsync"),
    ("os", "rename"),
    ("os", "link"),
    ("os", "unlink"),
    ("os", "fchmod"),
    ("os", "mkdir"),
    ("os", "scandir"),
    ("fcntl", "flock"),
)


class Census:
    """Counts every call of the os/fcntl functions in ``_CENSUS`` while active (a context manager), and the bytes
    each ``write`` puts in each file (by name): what one durable state costs in system calls. Not timed (the
    lookups of the file names cost more than the calls)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.written: collections.Counter[str] = collections.Counter()
        self.writes: collections.Counter[str] = collections.Counter()

    def __enter__(self) -> Census:
        modules = {"os": os, "fcntl": fcntl}
        self._saved = [(modules[m], name, getattr(modules[m], name)) for m, name in _CENSUS]
        for module, name, real in self._saved:
            setattr(module, name, self._wrap(name, real))
        return self

    def _wrap(self, name: str, real: Any) -> Any:
        calls = self.calls

        def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            if name == "write" and args:
                try:
                    target = Path(os.readlink(f"/proc/self/fd/{args[0]}")).name
                except OSError:
                    target = "?"
                if target.startswith(".tmp-"):
                    target = ".tmp-" + target.split("-")[1] + "-*"
                self.writes[target] += 1
                self.written[target] += len(args[1])
            return real(*args, **kwargs)

        return counted

    def __exit__(self, *exc: object) -> None:
        for module, name, real in self._saved:
            setattr(module, name, real)


def census_round(d: Path, n: int) -> tuple[Census, int]:
    """One run of ``n`` states under a :class:`Census`; returns it and the run log's size."""
    store = FsStore(d)
    engine = Engine(run_ids=fixed_run_ids())

    async def go() -> None:
        await start_plan(engine, store.stores, chain(n), base_config(), context())

    with Census() as census:
        asyncio.run(go())
    store.close()
    size = sum(p.stat().st_size for p in (d / "runs").glob("*/events.jsonl"))
    return census, size


def print_census(census: Census, n: int) -> None:
    per = {k: v / n for k, v in census.calls.items() if v}
    print(
        "   syscalls per state (census round, not timed): "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: (-kv[1], kv[0])))
    )
    print(
        "           writes per state by file: "
        + ", ".join(
            f"{k} {census.writes[k] / n:.2f} × {census.written[k] / max(census.writes[k], 1):.0f} B"
            for k in sorted(census.writes, key=lambda k: -census.written[k])
        )
    )


def store_path_label(d: Path) -> str:
    """Which path a step's blobs take on this FsStore: its unit of work, or put-then-append."""
    store = FsStore(d)
    try:
        unit = paired_unit_of_work(store.events, store.artifacts) is not None
    finally:
        store.close()
    return "unit of work (one commit per state)" if unit else "no unit of work: put each blob, then append"


@dataclass(frozen=True, slots=True)
class FloorRound:
    """µs per: 300 B append+fdatasync (and its fdatasync alone); append+fdatasync of the engine's bytes per state
    (and with a journal line after it, in a second file); a state's raw IO of the seed's layout."""

    one: float
    one_sync: float
    one_cpu: float
    sized: float
    sized_sync: float
    sized_journal: float
    state: float


def _append_loop(d: Path, name: str, size: int, n: int, journal: bool = False) -> tuple[float, float]:
    """``n`` appends of ``size`` bytes, each followed by ``fdatasync`` (and, with ``journal``, a 41-byte line appended
    to a second file, unsynced, as the store's change journal): (µs per append, µs of it in fdatasync)."""
    fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    jfd = os.open(d / f"{name}.journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if journal else -1
    line = b"x" * (size - 1) + b"\n"
    hint = b"00000000-0000-4000-8000-000000000001 1234\n"
    in_sync = 0.0
    clock = time.perf_counter
    try:
        t0 = clock()
        for _ in range(n):
            os.write(fd, line)
            s0 = clock()
            os.fdatasync(fd)
            in_sync += clock() - s0
            if journal:
                os.write(jfd, hint)
        total = clock() - t0
    finally:
        os.close(fd)
        if jfd >= 0:
            os.close(jfd)
    return total / n * 1e6, in_sync / n * 1e6


def floor_round(d: Path, n: int, snapshot_size: int, state_bytes: int) -> FloorRound:
    """``n`` times each floor, in the same directory (see :class:`FloorRound`)."""
    d.mkdir(parents=True, exist_ok=True)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    one, one_sync = _append_loop(d, "floor-append.bin", 300, n)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    one_cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / n * 1e6
    sized, sized_sync = _append_loop(d, "floor-sized.bin", state_bytes, n)
    sized_journal, _ = _append_loop(d, "floor-sized-journal.bin", state_bytes, n, journal=True)
    append, close = append_fsync_floor(d, 300)
    write = atomic_write_floor(d / "floor-blobs", snapshot_size)
    t0 = time.perf_counter()
    for _ in range(n):
        append()
        write()
        append()
    state = (time.perf_counter() - t0) / n * 1e6
    close()
    return FloorRound(one, one_sync, one_cpu, sized, sized_sync, sized_journal, state)


def durable_state(base: str | None, n: int, rounds: int) -> tuple[float, float]:
    """Print section 1; return (wall µs, CPU µs) per durable state.

    Each engine round is followed by a floor round in the same directory; ratios are taken per round (so both
    sides of a ratio saw the same disk contention) and the median ratio is reported.
    """
    snapshot_size = len(canonical_json_bytes(context()))
    engine: list[EngineRound] = []
    floors: list[FloorRound] = []
    slept: list[EngineRound] = []
    unsynced: list[EngineRound] = []
    with bench_dir("mfm-overhead-", base) as d:
        print(f"1. durable no-op state on the fs store: {n} states × {rounds} rounds in {d}")
        print(f"   store path: {store_path_label(d / 'probe')}")
        census, log_size = census_round(d / "census", n)
        state_bytes = max(1, round(log_size / n))
        for r in range(rounds):
            engine.append(engine_round(d / f"store-{r}", n))
            floors.append(floor_round(d / f"floor-{r}", n, snapshot_size, state_bytes))
            slept.append(engine_round(d / f"sleep-{r}", n, _SleepSync(floors[-1].one_sync / 1e6)))
            unsynced.append(engine_round(d / f"nosync-{r}", n, _NoSync()))
    append_us = [f.one for f in floors]
    state_floor_us = [f.state for f in floors]
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
    print_census(census, n)
    print_breakdown(engine, floors, state_bytes)
    print_blocking(engine, floors, slept, unsynced)
    return eng, cpu.user + cpu.system


def print_breakdown(engine: list[EngineRound], floors: list[FloorRound], state_bytes: int) -> None:
    """Where the engine's wall time per state goes, per round (engine round r beside floor round r), medians."""
    med = statistics.median
    sized = [f.sized / f.one for f in floors]
    journal = [f.sized_journal / f.sized for f in floors]
    print(
        f"   IO floors: {state_bytes} B append+fdatasync (the engine's bytes per state)"
        f" {med(f.sized for f in floors):.0f}"
        f" µs = {med(sized):.2f}× the 300 B floor ({_fmt(sized, 2)}); plus the journal line in a second file"
        f" {med(f.sized_journal for f in floors):.0f} µs = {med(journal):.2f}× without it ({_fmt(journal, 2)})"
    )
    print(
        f"   fdatasync: engine {med(e.fdatasync for e in engine):.0f} µs per state"
        f" ({_fmt([e.fdatasync for e in engine])}),"
        f" 300 B floor's {med(f.one_sync for f in floors):.0f} µs ({_fmt([f.one_sync for f in floors])}),"
        f" {state_bytes} B floor's {med(f.sized_sync for f in floors):.0f} µs"
    )
    rows = []
    for e, f in zip(engine, floors, strict=True):
        sync = e.fdatasync + e.fsync
        cpu_out = e.user + e.system  # fdatasync's own kernel work included (system time)
        rest = e.wall - sync - cpu_out
        rows.append((e.wall, f.one_sync, sync - f.one_sync, cpu_out, rest))
    parts = [med(r[i] for r in rows) for i in range(5)]
    wall = parts[0] or 1.0
    print(
        f"   wall per state {parts[0]:.0f} µs = floor's fdatasync {parts[1]:.0f} ({parts[1] / wall:.0%})"
        f" + the engine's extra time in fsync/fdatasync {parts[2]:.0f} ({parts[2] / wall:.0%})"
        f" + CPU (user + system, the syncs' kernel work included) {parts[3]:.0f} ({parts[3] / wall:.0%})"
        f" + the rest {parts[4]:.0f} ({parts[4] / wall:.0%}: off-CPU waits, run queue; negative: CPU overlapped)"
    )


def print_blocking(
    engine: list[EngineRound], floors: list[FloorRound], slept: list[EngineRound], unsynced: list[EngineRound]
) -> None:
    """The process's CPU per state with real syncs, with each fdatasync replaced by a sleep as long as the floor's,
    and with no syncs (rounds interleaved with the engine's): how much CPU blocking itself costs (caches cold after
    each wait), against the floor's own CPU per append+fdatasync."""
    med = statistics.median

    def cpu(rounds: list[EngineRound]) -> str:
        return f"{med(e.user + e.system for e in rounds):.0f} µs ({_fmt([e.user + e.system for e in rounds])})"

    print(
        f"   CPU per state (user + system): real fdatasync {cpu(engine)}; a sleep as long as the floor's"
        f" fdatasync instead {cpu(slept)}; no sync {cpu(unsynced)}; the 300 B floor's CPU per append+fdatasync"
        f" {med(f.one_cpu for f in floors):.0f} µs. Wall: sleep {med(e.wall for e in slept):.0f} µs, no sync"
        f" {med(e.wall for e in unsynced):.0f} µs per state"
    )


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
