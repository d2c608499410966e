"""Crash-loop stress: SIGKILL workers at random instants, resume, kill again … until every run is done.

    .venv/bin/python bench/crashloop.py --crash-points 1000 --seed 1 [--parallel 3] [--store DIR] [--json]
        [--format 1|2] [--migrate-kills N]

The demo operations (pipeline, flaky with a tiny backoff, fanout, side_effect, big) run in real worker processes
(``engine.workers`` — the same code ``mfm`` spawns), forked from a preloaded fork server so that a crash point costs
milliseconds, not an interpreter start. Each worker is killed with SIGKILL after a random delay drawn from
[0, 1.2 × the uncrashed duration of its operation]; a killed run is resumed by a new worker (``run`` again while it
has no event yet), until it has ``RunCompleted``. New runs are started (cycling over the operations) until the
requested number of crash points has been reached; then the remaining runs finish undisturbed.

Checked, and printed as counts:

- every run ends ``Completed`` with the same final snapshot id as its uncrashed twin (same manifest, no kill);
- no committed event is lost or changed: what a reader saw before a kill is a prefix of what it sees after
  (``lost states`` counts ``StateCompleted`` events that vanished);
- no side effect applied twice: no fact key bound twice in a run, ``side_effect_applied`` with ``applied: true``
  at most once per run and the target file written with the expected content, the flaky operation's failure
  facts exactly ``fail_times``;
- with ``--format 1 --migrate-kills N`` (a version-1 store), then: ``mfm doctor --migrate`` (``migrate_store`` in a
  forked child) SIGKILLed N times, each on a fresh copy of the version-1 store, at points chosen by offset in the
  migration's own disk-changing system calls (``bench/migration_crashes.py``); after each kill the copy opens and
  every run's events read exactly as before the migration; a last migration runs whole (version 2);
- ``engine.doctor.check_store`` finds no error in the store (leftover temp files of killed writes are warnings;
  they are counted, then moved by ``repair_store`` and the store is checked again).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.forkserver
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.context import ForkServerContext, ForkServerProcess
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.migration_crashes import migrate_store_whole, migration_crashes, store_runs

PRELOAD = [
    "engine.workers",
    "engine.demo_ops",
    "engine.runtime",
    "engine.exec_transport",
    "engine.stores.fs",
    "engine.operations",
]
OPS = ("demo_pipeline", "demo_flaky", "demo_fanout", "demo_side_effect", "demo_big")
FLAKY_FAILS = 2
SIDE_EFFECT_CONTENT = "written once by the crash loop\n"


def params_for(op_id: str, folder: Path) -> dict[str, Any]:
    if op_id == "demo_pipeline":
        return {"words": ["alpha", "beta", "gamma", "delta"]}
    if op_id == "demo_flaky":
        # Orphan restarts take attempt numbers too (ENGINE-SPEC §13: retries are bounded by attempt number), so
        # many kills inside the flaky state could exhaust a small max_attempts: leave room for them.
        return {"fail_times": FLAKY_FAILS, "base_delay_ms": 2, "max_delay_ms": 8, "max_attempts": 40}
    if op_id == "demo_fanout":
        return {"items": 6, "max_concurrency": 3, "item_delay_ms": 3}
    if op_id == "demo_side_effect":
        return {"folder": str(folder), "file_name": "effect.txt", "content": SIDE_EFFECT_CONTENT}
    if op_id == "demo_big":
        return {"states": 24, "events": 3, "delay_ms": 2}
    raise ValueError(op_id)


@dataclass
class RunRecord:
    run_id: str
    op_id: str
    params: dict[str, Any]
    twin_final: str | None
    launches: int = 0
    kills: int = 0
    status: str | None = None
    final: str | None = None
    lost_states: int = 0
    changed_events: int = 0
    double_effects: list[str] = field(default_factory=list)


@dataclass
class Summary:
    crash_points: int = 0
    crash_points_mid_write: int = 0
    """Kills that landed after the worker had appended at least one event (not during its start-up)."""
    runs: int = 0
    completed_like_twin: int = 0
    final_mismatches: int = 0
    lost_states: int = 0
    changed_events: int = 0
    double_effects: int = 0
    launches: int = 0
    doctor_errors: int = 0
    doctor_warnings: dict[str, int] = field(default_factory=dict)
    doctor_after_repair: int = 0
    moved_by_repair: int = 0
    seconds: float = 0.0
    per_op: dict[str, dict[str, int]] = field(default_factory=dict)
    uncrashed_ms: dict[str, int] = field(default_factory=dict)
    startup_ms: int = 0
    """Uncrashed time from a worker's first append to its exit, per operation (its twin's)."""
    store_version: int = 2
    migration_kills: int = 0
    """SIGKILLs of a live ``mfm doctor --migrate`` (``--migrate-kills``)."""
    migration_restarts: int = 0
    """Migrations that finished before their kill (the version-1 store was laid anew for the next one)."""
    migration_unreadable: int = 0
    """Kills after which the store did not open, or a run's events did not read as before the migration."""
    migration_final_version: int = 0
    migration_calls: int = 0
    """System calls that change the disk (:data:`MUTATING_CALLS`) in an uncrashed migration of the store."""
    migration_points: int = 0
    """Distinct kill points among the kills: (call offset, where in a torn write)."""
    migration_torn_writes: int = 0
    migration_resumed: int = 0
    """Killed stores on which the migration, run again, finished with every run reading as before."""
    migration_seconds: float = 0.0
    migration_dir: str = ""
    migration_opened_as: dict[str, int] = field(default_factory=dict)
    """How many killed copies opened as version 1, and as version 2."""
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    def lines(self) -> list[str]:
        return [
            f"crash points (SIGKILL of a live worker): {self.crash_points} "
            f"({self.crash_points_mid_write} after the worker had written events)",
            f"runs: {self.runs} ({self.completed_like_twin} completed with their uncrashed twin's final snapshot, "
            f"{self.final_mismatches} mismatched), worker launches: {self.launches}",
            f"lost states: {self.lost_states}, changed events: {self.changed_events}",
            f"double effects: {self.double_effects}",
            f"doctor findings: {self.doctor_errors} error(s), warnings {self.doctor_warnings or {}}; "
            f"after repair (moved {self.moved_by_repair}): {self.doctor_after_repair} finding(s)",
            f"per operation: {self.per_op}",
            f"uncrashed work after the first append (ms): {self.uncrashed_ms}; worker start-up: {self.startup_ms} ms "
            "(20% of kills: uniform in the start-up; 80%: uniform in 1.2x the work, from the first new append)",
            f"store format: version {self.store_version}",
            *(
                [
                    f"migration: {self.migration_kills} kill(s) of `mfm doctor --migrate`, each on a fresh copy of "
                    f"the version-1 store (in {self.migration_dir}), at {self.migration_points} distinct points of "
                    f"its {self.migration_calls} disk-changing system calls ({self.migration_torn_writes} inside a "
                    f"write; {self.migration_restarts} after the last call); the killed copies opened as "
                    f"{self.migration_opened_as}; {self.migration_unreadable} left a "
                    "store that did not open as version 1 or 2 or read differently, "
                    f"{self.migration_resumed} finished when the migration was run again; "
                    f"{self.migration_seconds} s; the store's own migration, uncrashed, left version "
                    f"{self.migration_final_version}"
                ]
                if self.migration_kills
                else []
            ),
            f"time: {self.seconds:.1f} s",
        ]


# ---------------------------------------------------------------------------------------------
# Workers from a preloaded fork server
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_fds() -> Iterator[None]:
    """Point fds 1 and 2 at /dev/null while the fork server starts (its workers inherit them)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


class Launcher:
    def __init__(self, store: Path) -> None:
        self.store = store
        self.ctx: ForkServerContext = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        with _quiet_fds():
            multiprocessing.forkserver.ensure_running()
        self._lock = threading.Lock()

    def start(self, *args: str) -> ForkServerProcess:
        from engine.workers import main

        argv = ["--store", str(self.store), "--ops", "engine.demo_ops", "--no-entry-points", *args]
        with self._lock:
            proc = self.ctx.Process(target=main, args=(argv,), daemon=True)
            proc.start()
        return proc


# ---------------------------------------------------------------------------------------------
# Reading the store
# ---------------------------------------------------------------------------------------------


def read_events(store: Path, run_id: str) -> list[Any]:
    from engine.ids import RunId
    from engine.stores.fs import FsStore

    async def go() -> list[Any]:
        with FsStore(store) as s:
            return await s.events.read_range(RunId(run_id), 1)

    return asyncio.run(go())


def final_of(envs: list[Any]) -> tuple[str | None, str | None]:
    from engine.events import RunCompleted

    for e in envs:
        if isinstance(e.event, RunCompleted):
            fid = e.event.final_snapshot_id
            return str(e.event.status), None if fid is None else str(fid)
    return None, None


def side_effect_problems(rec: RunRecord, envs: list[Any]) -> list[str]:
    """Double application evidence in one finished run."""
    from engine.events import DOMAIN_EVENT_FACT_RECORDED, DomainEvent

    out: list[str] = []
    keys: Counter[str] = Counter()
    applied = 0
    flaky_failures = 0
    for e in envs:
        ev = e.event
        if not isinstance(ev, DomainEvent):
            continue
        if ev.name == DOMAIN_EVENT_FACT_RECORDED and isinstance(ev.payload, dict):
            key = str(ev.payload.get("key"))
            keys[key] += 1
            if key.startswith("demo_flaky:failure:"):
                flaky_failures += 1
        if ev.name == "side_effect_applied" and isinstance(ev.payload, dict):
            result = ev.payload.get("result")
            if isinstance(result, dict) and result.get("applied") is True:
                applied += 1
    for key, n in keys.items():
        if n > 1:
            out.append(f"fact {key!r} bound {n} times")
    if rec.op_id == "demo_side_effect":
        if applied > 1:
            out.append(f"side effect applied {applied} times")
        target = Path(rec.params["folder"]) / rec.params["file_name"]
        try:
            content = target.read_text()
        except OSError:
            content = None
        if content != SIDE_EFFECT_CONTENT:
            out.append(f"side-effect target {target} holds {content!r}")
    if rec.op_id == "demo_flaky" and flaky_failures != FLAKY_FAILS:
        out.append(f"flaky recorded {flaky_failures} failures, expected {FLAKY_FAILS}")
    return out


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


class CrashLoop:
    def __init__(
        self,
        root: Path,
        crash_points: int,
        seed: int,
        parallel: int,
        kill_factor: float = 1.2,
        ops: tuple[str, ...] = OPS,
        store_version: int = 2,
        migrate_kills: int = 0,
        migrate_dir: Path | None = None,
    ) -> None:
        self.ops = ops
        self.migrate_dir = migrate_dir
        self.store_version = store_version
        self.migrate_kills = migrate_kills
        self.root = root
        self.store = root / "store"
        self.effects = root / "effects"
        self.target = crash_points
        self.rng = random.Random(seed)
        self.parallel = max(1, parallel)
        self.kill_factor = kill_factor
        self.lock = threading.Lock()
        self.summary = Summary()
        self.records: list[RunRecord] = []
        self.durations: dict[str, float] = {}
        self.twins: dict[str, str | None] = {}
        self.counter = 0
        self.startups: list[float] = []
        """Time from a twin worker's launch to its first append (start-up), for every twin."""
        self.early_share = 0.2
        """Share of kills aimed at start-up (before the first append); the rest land while the worker works."""
        from engine.stores.fs import FsStore

        FsStore(self.store, new_version=store_version).close()
        self.summary.store_version = store_version
        self.launcher = Launcher(self.store)

    # -- preparing runs ------------------------------------------------------------------------------------------

    def prepare(self, op_id: str, params: dict[str, Any]) -> tuple[str, str]:
        from engine.ids import RunId
        from engine.operations import load_registry, prepare_run
        from engine.stores.fs import FsStore

        async def go() -> tuple[str, str]:
            with FsStore(self.store) as s:
                registry = load_registry(["engine.demo_ops"], entry_points=False)
                prepared = await prepare_run(s.stores, registry, op_id, params, run_id=RunId.new_v4())
                return str(prepared.run_id), str(prepared.manifest_id)

        return asyncio.run(go())

    def events_size(self, run_id: str) -> int:
        try:
            return os.stat(self.store / "runs" / run_id / "events.jsonl").st_size
        except FileNotFoundError:
            return 0

    def wait_growth(self, proc: ForkServerProcess, run_id: str, size: int, timeout: float) -> float | None:
        """Poll (every ms) until the run's event file grows past ``size``; the time it took, None if it exited."""
        t0 = time.monotonic()
        while proc.is_alive() and time.monotonic() - t0 < timeout:
            if self.events_size(run_id) > size:
                return time.monotonic() - t0
            time.sleep(0.001)
        return None

    def twin(self, op_id: str, params: dict[str, Any]) -> str | None:
        """Run once without a kill; return its final snapshot id (and time its start-up and its work)."""
        run_id, manifest_id = self.prepare(op_id, params)
        t0 = time.monotonic()
        proc = self.launcher.start("run", "--run-id", run_id, "--manifest", manifest_id)
        startup = self.wait_growth(proc, run_id, 0, 120)
        proc.join(120)
        elapsed = time.monotonic() - t0
        with self.lock:
            if startup is not None:
                self.startups.append(startup)
                self.durations[op_id] = elapsed - startup
        status, final = final_of(read_events(self.store, run_id))
        if status != "Completed":
            self.summary.problems.append(f"twin of {op_id} ended {status}")
        return final

    def new_record(self) -> RunRecord:
        with self.lock:
            op_id = self.ops[self.counter % len(self.ops)]
            self.counter += 1
            n = self.counter
        folder = self.effects / f"run{n:05d}"
        params = params_for(op_id, folder)
        if op_id == "demo_side_effect":
            if op_id not in self.durations:
                self.twin(op_id, params_for(op_id, folder.with_name(folder.name + "-warmup")))
            twin_final = self.twin(op_id, params)  # the twin applies it first ...
            (folder / params["file_name"]).unlink()  # ... then the crashed run applies it again from scratch
        else:
            with self.lock:
                known = op_id in self.twins
            if not known:
                self.twin(op_id, params)  # the first worker of an operation pays for lazy imports: time a second
                final = self.twin(op_id, params)
                with self.lock:
                    self.twins[op_id] = final
            twin_final = self.twins[op_id]
        run_id, manifest_id = self.prepare(op_id, params)
        rec = RunRecord(run_id, op_id, params, twin_final)
        rec.params["_manifest"] = manifest_id
        return rec

    # -- crashing one run until it is done ------------------------------------------------------------------------

    def budget_left(self) -> bool:
        with self.lock:
            return self.summary.crash_points < self.target

    def drive(self, rec: RunRecord, rng: random.Random) -> None:
        from engine.events import StateCompleted

        seen: list[Any] = []
        while True:
            if rec.launches > 500:
                rec.double_effects.append("gave up after 500 launches")
                return
            size = self.events_size(rec.run_id)
            if seen:
                proc = self.launcher.start("resume", rec.run_id)
            else:
                proc = self.launcher.start("run", "--run-id", rec.run_id, "--manifest", rec.params["_manifest"])
            rec.launches += 1
            killed = False
            if self.budget_left():
                with self.lock:
                    startup = sorted(self.startups)[len(self.startups) // 2] if self.startups else 0.05
                    work = self.durations.get(rec.op_id, 0.2)
                if rng.random() < self.early_share:
                    proc.join(rng.uniform(0.0, startup))  # during start-up and resume analysis
                elif self.wait_growth(proc, rec.run_id, size, 60) is not None:
                    proc.join(rng.uniform(0.0, self.kill_factor * work))  # while it works
                if proc.is_alive() and proc.pid is not None:
                    try:
                        os.kill(proc.pid, signal.SIGKILL)
                        killed = True
                    except ProcessLookupError:
                        pass  # it exited just now (not reaped yet): not a crash point
            proc.join(300)
            if proc.is_alive():
                proc.kill()
                proc.join()
            now = read_events(self.store, rec.run_id)
            if killed:
                rec.kills += 1
                with self.lock:
                    self.summary.crash_points += 1
                    if len(now) > len(seen):
                        self.summary.crash_points_mid_write += 1
            prefix = now[: len(seen)]
            if prefix != seen:
                gone = [e for e in seen if e not in now]
                rec.lost_states += sum(isinstance(e.event, StateCompleted) for e in gone)
                rec.changed_events += sum(a != b for a, b in zip(prefix, seen, strict=False)) + len(seen) - len(prefix)
            seen = now
            status, final = final_of(now)
            if status is not None:
                rec.status, rec.final = status, final
                rec.double_effects.extend(side_effect_problems(rec, now))
                return

    def worker_thread(self, seed: int) -> None:
        rng = random.Random(seed)
        while self.budget_left():
            rec = self.new_record()
            with self.lock:
                self.records.append(rec)
            self.drive(rec, rng)

    # -- the whole bench ----------------------------------------------------------------------------------------

    def run(self) -> Summary:
        t0 = time.monotonic()
        threads = [
            threading.Thread(target=self.worker_thread, args=(self.rng.randrange(1 << 30),), daemon=True)
            for _ in range(self.parallel)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        s = self.summary
        s.seconds = time.monotonic() - t0
        s.runs = len(self.records)
        s.launches = sum(r.launches for r in self.records)
        s.startup_ms = round(sorted(self.startups)[len(self.startups) // 2] * 1000) if self.startups else 0
        s.uncrashed_ms = {k: round(v * 1000) for k, v in sorted(self.durations.items())}
        for r in self.records:
            per = s.per_op.setdefault(r.op_id, {"runs": 0, "kills": 0})
            per["runs"] += 1
            per["kills"] += r.kills
            s.lost_states += r.lost_states
            s.changed_events += r.changed_events
            s.double_effects += len(r.double_effects)
            s.problems.extend(f"{r.op_id} {r.run_id}: {p}" for p in r.double_effects)
            if r.status == "Completed" and r.final == r.twin_final and r.final is not None:
                s.completed_like_twin += 1
            else:
                s.final_mismatches += 1
                s.problems.append(f"{r.op_id} {r.run_id}: ended {r.status} {r.final} (twin {r.twin_final})")
        self.check_with_doctor()
        if self.migrate_kills:
            self.crash_migrations()
        return s

    def crash_migrations(self) -> None:
        """Kill ``mfm doctor --migrate`` (``migrate_store`` in a forked child) ``migrate_kills`` times, each on a
        fresh copy of the version-1 store, at kill points chosen by offset in the migration's own system calls (see
        :func:`migration_crashes`); then migrate the store itself, uncrashed."""
        s = self.summary
        runs = store_runs(self.store)  # every run in the store: the crashed ones and their uncrashed twins
        result = migration_crashes(
            self.store, runs, self.migrate_kills, random.Random(self.rng.randrange(1 << 30)), self.migrate_dir
        )
        s.migration_kills = result.kills
        s.migration_restarts = result.finished
        s.migration_unreadable = result.bad
        s.migration_calls = result.calls
        s.migration_points = result.distinct
        s.migration_torn_writes = result.torn
        s.migration_resumed = result.resumed
        s.migration_seconds = round(result.seconds, 1)
        s.migration_opened_as = {f"v{v}": n for v, n in sorted(result.opened_as.items())}
        s.migration_dir = result.where
        s.problems.extend(result.problems)
        expected = {run_id: read_events(self.store, run_id) for run_id in runs}
        done = migrate_store_whole(self.store)
        s.migration_final_version = done.version_after
        if done.blocked or any(read_events(self.store, r) != envs for r, envs in expected.items()):
            s.problems.append(f"the final migration: blocked {done.blocked}, or events read differently")
            s.migration_unreadable += 1
        self.check_with_doctor()

    def check_with_doctor(self) -> None:
        from engine.doctor import check_store, repair_store

        s = self.summary
        report = check_store(self.store)
        s.doctor_errors = len(report.errors)
        s.problems.extend(f.one_line() for f in report.errors)
        s.doctor_warnings = dict(Counter(f.code for f in report.findings if f.severity == "warning"))
        s.moved_by_repair = len(repair_store(self.store, report))
        after = check_store(self.store)
        s.doctor_after_repair = len(after.findings)
        s.problems.extend(f"after repair: {f.one_line()}" for f in after.findings)


def run_crashloop(
    root: Path,
    *,
    crash_points: int,
    seed: int,
    parallel: int = 3,
    ops: tuple[str, ...] = OPS,
    store_version: int = 2,
    migrate_kills: int = 0,
    migrate_dir: Path | None = None,
) -> Summary:
    loop = CrashLoop(
        root,
        crash_points,
        seed,
        parallel,
        ops=ops,
        store_version=store_version,
        migrate_kills=migrate_kills,
        migrate_dir=migrate_dir,
    )
    return loop.run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crash-points", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--parallel", type=int, default=3)
    p.add_argument("--store", default=None, help="work folder (default: a temporary one, removed afterwards)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    p.add_argument("--format", type=int, choices=(1, 2), default=2, help="store version to create (default 2)")
    p.add_argument(
        "--migrate-kills",
        type=int,
        default=0,
        help="then kill `mfm doctor --migrate` this many times, at points chosen by offset in its system calls"
        " (needs --format 1)",
    )
    p.add_argument(
        "--migrate-dir",
        default=None,
        help="where the killed copies are made (default: /dev/shm when there is one: a kill loses nothing from the"
        " page cache, so memory-backed files see every state a kill leaves, without the fsync waits)",
    )
    ns = p.parse_args(argv)
    if ns.migrate_kills and ns.format != 1:
        p.error("--migrate-kills needs a version-1 store: --format 1")
    with contextlib.ExitStack() as stack:
        root = (
            Path(ns.store)
            if ns.store
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mfm-crashloop-")))
        )
        summary = run_crashloop(
            root,
            crash_points=ns.crash_points,
            seed=ns.seed,
            parallel=ns.parallel,
            ops=tuple(o for o in ns.ops.split(",") if o),
            store_version=ns.format,
            migrate_kills=ns.migrate_kills,
            migrate_dir=Path(ns.migrate_dir) if ns.migrate_dir else None,
        )
    if ns.json:
        print(json.dumps(summary.to_json(), indent=2, sort_keys=True))
    else:
        print(f"crash loop: seed {ns.seed}, target {ns.crash_points} crash points, {ns.parallel} runs in parallel")
        for line in summary.lines():
            print("  " + line)
        for problem in summary.problems[:20]:
            print("  PROBLEM: " + problem)
    bad = (
        summary.lost_states
        or summary.changed_events
        or summary.double_effects
        or summary.final_mismatches
        or summary.doctor_errors
        or summary.doctor_after_repair
        or summary.migration_unreadable
        or (ns.migrate_kills and summary.migration_final_version != 2)
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
