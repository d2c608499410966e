"""The runtime under SIGKILL in real processes, resumed in new processes (ENGINE-SPEC §0.5, §0.10, §4.3, §13).

The plan of ``tests/engine/crash_child.py`` (retry, fan-out of three under ``FanOutJoin{2}``, an exec call, an
``ApplySideEffect`` state with ``Idempotency::Key``) runs on an ``FsStore`` in child processes forked from a
``multiprocessing`` forkserver that preloaded the engine (fresh processes that start in milliseconds).

- Boundaries: for every k in 1..N (N = the appends of the uninterrupted run) a child SIGKILLs itself right after
  its k-th append returned; a new process resumes. The engine batches what the contract allows (a state's
  ``StateCompleted`` travels with the next ``StateEntered``), so every boundary but the last leaves at least one
  attempt open or a retry pending: the test checks that, and that the boundaries still cover one and two open
  attempts (fan-out), an open attempt whose fact is durable, a pending retry and the finished run.
- Random instants: seeded, a child is SIGKILLed by the parent at a random instant; resumes are themselves killed at
  random instants some of the time, until one completes. The run's retry budget follows from the number of kills
  (:func:`attempt_budget`), so where the kills land can never decide the outcome.

Every killed run must end Completed with the final snapshot id of the uninterrupted run, its stream must pass the
runtime's attempt-envelope analysis with one RunStarted, one RunCompleted and every state completed once, and the
side effect must be applied exactly once (one line in the effect file, one side-effect fact). At boundaries, where
a kill can never fall between the effect and its durable fact, the transport must also have been reached only once.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine._runtime.envelopes import analyze
from engine.events import (
    DomainEvent,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from engine.runtime import side_effect_fact_key
from engine.stores.fs import FsStore
from engine.testing import entered, sid, trace
from tests.engine import crash_child
from tests.engine.crash_child import EXIT_ERROR, IDEMPOTENCY_KEY, RUN_ID

pytestmark = pytest.mark.slow

RANDOM_KILLS = 20
SEED = 20261126
MAX_KILLED_RESUMES = 3
MAX_KILLS_PER_RUN = 1 + MAX_KILLED_RESUMES  # the start's kill, then at most MAX_KILLED_RESUMES killed resumes
CHILD_TIMEOUT_S = 60.0
STATES = ("flaky", "fan_b", "fan_c", "fan_d", "run_exec", "apply_effect")
EXPECTED_FINAL = {
    "input": "crash",
    "flaky": "ok",
    "fan_b": 2,
    "fan_c": 3,
    "fan_d": 4,
    "exec": {"echo": {"b": 2}, "program": "echo_json"},
    "effect": {"applied": IDEMPOTENCY_KEY},
}

_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(crash_child.PRELOAD)


@dataclass(frozen=True)
class Reference:
    bin_dir: Path
    final: str
    heads: list[int]
    wall_s: float
    work: Path


def attempt_budget(kills: int) -> int:
    """The ``max_attempts`` under which no placement of ``kills`` SIGKILLs can fail the run (ENGINE-SPEC §13, §7.1).

    A kill inside an attempt of a state costs that state one attempt number: resume closes the orphan with a
    retryable ``orphan_attempt_recovered`` failure and restarts at attempt + 1 (§13 step 9, not bounded), and a kill
    right after that failure leaves it as the state's recorded failure, retried only while attempt + 1 <
    max_attempts (§13 step 10). A kill outside every attempt costs nothing, and ``flaky`` fails once by design.
    Worst case: every kill lands in ``flaky`` before its designed failure, so attempts 0 … kills-1 are orphans,
    attempt ``kills`` fails by design and is retried only if kills + 1 < max_attempts, and attempt kills + 1
    succeeds. Hence kills + 2 (3 for one kill, the plan's default; a budget of kills + 1 can fail:
    ``test_kills_inside_one_state_need_exactly_their_budget``).
    """
    return kills + 2


def _spawn(mode: str, work: Path, bin_dir: Path, kill_after: int | None = None, max_attempts: int = 3) -> Any:
    """Start a child; return once it is running ``child_main`` (so a kill delay measures engine work only)."""
    started = _CTX.Event()
    args = (mode, str(work), str(bin_dir), kill_after, started, max_attempts)
    proc = _CTX.Process(target=crash_child.child_main, args=args)
    proc.start()
    if not started.wait(CHILD_TIMEOUT_S):
        proc.kill()
        pytest.fail(f"child did not start within {CHILD_TIMEOUT_S} s ({work})")
    return proc


def _join(proc: Any, work: Path) -> int:
    proc.join(CHILD_TIMEOUT_S)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        pytest.fail(f"child {proc.pid} did not finish within {CHILD_TIMEOUT_S} s ({work})")
    code: int = proc.exitcode
    if code == EXIT_ERROR:
        pytest.fail(f"child failed in {work}:\n{(work / 'error.txt').read_text()}")
    assert code in (0, -signal.SIGKILL), f"unexpected exit status {code} in {work}"
    return code


def _result(work: Path) -> dict[str, Any] | None:
    path = work / "result.json"
    if not path.exists():
        return None
    out: dict[str, Any] = json.loads(path.read_text())
    return out


def _stream(work: Path) -> list[EventEnvelope]:
    async def read() -> list[EventEnvelope]:
        return await FsStore(work / "store").events.read_range(RUN_ID, 1, None)

    return asyncio.run(read())


def _snapshot(work: Path, artifact_id: str) -> Any:
    async def read() -> bytes:
        from engine.ids import ArtifactId

        return await FsStore(work / "store").artifacts.get(ArtifactId(artifact_id))

    return json.loads(asyncio.run(read()))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    bin_dir = tmp_path_factory.mktemp("bin")
    crash_child.write_program(bin_dir)
    walls, finals = [], set()
    for name in ("warmup", "again", "reference"):  # the first also starts the forkserver
        work = tmp_path_factory.mktemp(name)
        proc = _spawn("start", work, bin_dir)
        t0 = time.perf_counter()
        assert _join(proc, work) == 0
        walls.append(time.perf_counter() - t0)
        finals.add((_result(work) or {}).get("final"))
    assert len(finals) == 1, "uninterrupted runs in three processes must end with the same snapshot"
    res = _result(work)
    assert res is not None and res["phase"] == "Completed"
    assert _snapshot(work, res["final"]) == EXPECTED_FINAL
    envs = _stream(work)
    assert len(envs) == res["heads"][-1]
    _check_outcome(work, res["final"], transport_calls=1)
    # The window random kills are drawn from: child_main entered to exit, the fastest of three runs.
    return Reference(bin_dir=bin_dir, final=res["final"], heads=res["heads"], wall_s=min(walls), work=work)


def _check_outcome(work: Path, final: str, *, transport_calls: int | None) -> list[EventEnvelope]:
    """The run completed with ``final``, its stream is valid, the side effect was applied exactly once."""
    res = _result(work)
    assert res is not None, f"no completed process in {work}"
    assert (res["phase"], res["final"]) == ("Completed", final)
    envs = _stream(work)
    assert [e.seq for e in envs] == list(range(1, len(envs) + 1))
    history = analyze(envs, RUN_ID)  # raises EnvelopeViolation on any attempt-envelope violation
    assert history.orphans == []
    assert history.run_completed is not None
    assert (history.run_completed.status, history.run_completed.final_snapshot_id) == (RunStatus.COMPLETED, final)
    kinds = Counter(type(e.event) for e in envs)
    assert (kinds[RunStarted], kinds[RunCompleted]) == (1, 1)
    assert isinstance(envs[-1].event, RunCompleted)
    completed = Counter(e.event.state_id for e in envs if isinstance(e.event, StateCompleted))
    assert completed == Counter({sid(s): 1 for s in STATES})
    effect_key = side_effect_fact_key(sid("apply_effect"), IDEMPOTENCY_KEY, 0)
    effect_facts = [
        e
        for e in envs
        if isinstance(e.event, DomainEvent)
        and e.event.name == "fact_recorded"
        and isinstance(e.event.payload, dict)
        and e.event.payload.get("key") == effect_key
    ]
    assert len(effect_facts) == 1
    assert _lines(work / "effect.txt") == [IDEMPOTENCY_KEY]
    if transport_calls is not None:
        assert len(_lines(work / "calls.txt")) == transport_calls
    return envs


def test_reference_run_is_the_planned_shape(reference: Reference) -> None:
    """The uninterrupted run has what the kills are meant to cut through: a retry, a fan-out with two attempts
    open at once (never three), an exec fact and a side-effect fact."""
    envs = _stream(reference.work)
    t = trace(envs)
    assert ("F", "flaky", "flaky", True) in t
    assert entered(envs, "flaky") == [0, 1]
    open_now, most = set(), 0
    for ev in (e.event for e in envs):
        if isinstance(ev, StateEntered):
            open_now.add(ev.state_id)
        elif isinstance(ev, StateCompleted | StateFailed):
            open_now.discard(ev.state_id)
        most = max(most, len(open_now))
    assert most == 2
    keys = [
        e.event.payload["key"] for e in envs if isinstance(e.event, DomainEvent) and isinstance(e.event.payload, dict)
    ]
    assert keys == [
        crash_child.FLAKY_FACT,
        crash_child.EXEC_FACT,
        side_effect_fact_key(sid("apply_effect"), IDEMPOTENCY_KEY),
    ]
    assert reference.heads == sorted(set(reference.heads)) and reference.heads[-1] == len(envs)


def _boundary_kind(envs: list[EventEnvelope]) -> str:
    """What a stream cut at an append boundary leaves to resume (ENGINE-SPEC §13 steps 7, 9, 10)."""
    history = analyze(envs, RUN_ID)
    if history.run_completed is not None:
        return "finished"
    if history.orphans:
        fact_inside = isinstance(envs[-1].event, DomainEvent)  # the attempt's fact is the last durable record
        return f"{len(history.orphans)} open" + (" + fact" if fact_inside else "")
    last = envs[-1].event
    if isinstance(last, StateFailed) and last.error.retryable:
        return "retry pending"
    return "between states"  # StateCompleted durable, the next StateEntered not: the batching rules it out


def test_sigkill_after_every_append_then_resume_in_new_process(reference: Reference, tmp_path: Path) -> None:
    assert attempt_budget(1) == 3  # one kill per run: the plan's default budget is enough
    kinds = []
    for k in range(1, len(reference.heads) + 1):
        work = tmp_path / f"k{k:02d}"
        work.mkdir()
        assert _join(_spawn("start", work, reference.bin_dir, kill_after=k), work) == -signal.SIGKILL
        assert _result(work) is None
        killed = _stream(work)
        assert len(killed) == reference.heads[k - 1], f"kill after append {k}: stream not at that boundary"
        kinds.append(_boundary_kind(killed))
        assert _join(_spawn("resume", work, reference.bin_dir), work) == 0
        _check_outcome(work, reference.final, transport_calls=1)
    assert "between states" not in kinds, kinds
    assert kinds[-1] == "finished" and kinds.count("finished") == 1, kinds
    assert {"1 open", "2 open", "1 open + fact", "retry pending"} <= set(kinds), kinds


def test_kills_inside_one_state_need_exactly_their_budget(reference: Reference, tmp_path: Path) -> None:
    """Every kill lands inside an attempt of ``flaky`` before its designed failure (the worst case of
    :func:`attempt_budget`): the run completes with ``attempt_budget(kills)`` and fails with one attempt less."""
    kills = MAX_KILLS_PER_RUN
    for max_attempts, phase in ((attempt_budget(kills), "Completed"), (attempt_budget(kills) - 1, "Failed")):
        work = tmp_path / f"budget{max_attempts}"
        work.mkdir()
        # The 1st append opens an attempt of flaky: E(flaky, 0) with RunStarted at the start; at each resume
        # E(flaky, a + 1) with the orphan's StateFailed. Killed there, before flaky records its fact.
        proc = _spawn("start", work, reference.bin_dir, kill_after=1, max_attempts=max_attempts)
        assert _join(proc, work) == -signal.SIGKILL
        for _ in range(kills - 1):
            assert _join(_spawn("resume", work, reference.bin_dir, kill_after=1), work) == -signal.SIGKILL
        assert _join(_spawn("resume", work, reference.bin_dir), work) == 0
        res = _result(work)
        assert res is not None and res["phase"] == phase
        envs = _stream(work)
        orphaned = [e.event for e in envs if isinstance(e.event, StateFailed)][:kills]
        assert [f.error.code for f in orphaned] == ["orphan_attempt_recovered"] * kills
        if phase == "Completed":
            assert entered(envs, "flaky") == list(range(kills + 2))
            _check_outcome(work, reference.final, transport_calls=1)
        else:
            assert entered(envs, "flaky") == list(range(kills + 1))


def test_sigkill_at_random_instants_then_resume_until_completed(reference: Reference, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    window = reference.wall_s
    budget = attempt_budget(MAX_KILLS_PER_RUN)
    kills = 0
    killed_resumes = 0
    restarts = 0
    reapplied = 0
    for i in range(RANDOM_KILLS):
        work = tmp_path / f"r{i:02d}"
        work.mkdir()
        proc = _spawn("start", work, reference.bin_dir, max_attempts=budget)
        time.sleep(rng.uniform(0.0, window))
        proc.kill()
        killed_here = int(_join(proc, work) == -signal.SIGKILL)
        kills += killed_here
        rounds = 0
        while _result(work) is None:
            # Killed before RunStarted was durable: the run does not exist, so it is started again (resume would
            # rightly answer run_not_found).
            mode = "resume" if _stream(work) else "start"
            restarts += mode == "start"
            proc = _spawn(mode, work, reference.bin_dir, max_attempts=budget)
            if rounds < MAX_KILLED_RESUMES and rng.random() < 0.5:
                time.sleep(rng.uniform(0.0, window / 2))
                proc.kill()
                killed = int(_join(proc, work) == -signal.SIGKILL)
                killed_resumes += killed
                killed_here += killed
            else:
                assert _join(proc, work) == 0
            rounds += 1
        envs = _check_outcome(work, reference.final, transport_calls=None)
        assert killed_here <= MAX_KILLS_PER_RUN
        # Each orphan recovery needs a kill inside an attempt of its state (§13 step 9).
        orphans = Counter(
            e.event.state_id
            for e in envs
            if isinstance(e.event, StateFailed) and e.event.error.code == "orphan_attempt_recovered"
        )
        assert all(n <= killed_here for n in orphans.values()), (orphans, killed_here)
        # >1 only when a kill fell between the effect and its durable fact: the external key check absorbed it.
        reapplied += len(_lines(work / "calls.txt")) > 1
    print(
        f"\nrandom SIGKILLs: {kills} of {RANDOM_KILLS} starts killed before completing, {killed_resumes} resumes"
        f" killed too, {restarts} restarts (killed before RunStarted was durable), {reapplied} runs whose effect"
        f" transport was reached twice; kill window {window * 1000:.0f} ms"
    )
