"""The crash loop (bench/crashloop.py), small and seeded, and the resume rule it found broken.

Workers of the demo operations are killed with SIGKILL at random instants and resumed until done; every run must
end with its uncrashed twin's final snapshot, no committed event may vanish, no side effect may be applied twice,
and ``mfm doctor`` must find no error. The bench prints the same figures at 1,000+ crash points.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from engine._kinds import ArtifactKind
from engine.config import Duration, Fixed, RetryPolicy
from engine.engine import RunPhase
from engine.errors import ErrorCategory, ErrorInfo, StateError
from engine.events import EventEnvelope, RunStarted, StateEntered, StateFailed
from engine.hashing import canonical_json_bytes
from engine.ids import OpId, RunId
from engine.runtime import Engine
from engine.stores import MemoryStore
from engine.testing import (
    FakeClock,
    FakeSleeper,
    SetKey,
    base_config,
    fixed_run_ids,
    make_manifest,
    make_plan,
    read_events,
    sid,
    store_manifest,
    trace,
)

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mfm_bench_crashloop", ROOT / "bench" / "crashloop.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_crash_loop_small(tmp_path: Path) -> None:
    bench = _bench()
    summary = bench.run_crashloop(tmp_path, crash_points=60, seed=20261126, parallel=2)
    print("\n" + "\n".join(summary.lines()))
    assert summary.crash_points >= 60
    assert summary.runs >= len(bench.OPS)
    assert summary.per_op.keys() == set(bench.OPS)
    assert summary.lost_states == 0 and summary.changed_events == 0
    assert summary.double_effects == 0, summary.problems
    assert summary.final_mismatches == 0, summary.problems
    assert summary.completed_like_twin == summary.runs
    assert summary.doctor_errors == 0, summary.problems
    assert summary.doctor_after_repair == 0, summary.problems
    assert not summary.problems


RUN = RunId("22222222-2222-4222-8222-222222222222")


def _env(seq: int, event: object) -> EventEnvelope:
    return EventEnvelope(run_id=RUN, seq=seq, ts_millis=None, event=event)  # type: ignore[arg-type]


async def test_crash_between_orphan_recovery_and_restart_does_not_exhaust_attempts() -> None:
    """Found by the crash loop: attempt 2 of 3 was an orphan; resume wrote its ``orphan_attempt_recovered``
    failure and was killed before ``StateEntered``. The next resume must still restart the state (the orphan
    restart is not bounded by ``max_attempts``, §13 step 9), not fail the run as if retries were exhausted."""
    ms = MemoryStore()
    cfg = base_config(retry_policy=RetryPolicy(max_attempts=3, backoff=Fixed(delay=Duration.from_millis(0))))
    mid = await store_manifest(ms.stores, make_manifest(cfg))
    iid = await ms.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, canonical_json_bytes({}))
    s1 = sid("s1")
    orphan = StateError(
        ErrorInfo.new(
            "orphan_attempt_recovered",
            "orphaned state attempt recovered during resume",
            category=ErrorCategory.UNKNOWN,
            retryable=True,
        ),
        s1,
    )
    events = [
        RunStarted(op_id=OpId("op"), manifest_id=mid, initial_snapshot_id=iid),
        StateEntered(state_id=s1, attempt=0, base_snapshot_id=iid),
        StateFailed(state_id=s1, error=orphan),
        StateEntered(state_id=s1, attempt=1, base_snapshot_id=iid),
        StateFailed(state_id=s1, error=orphan),
        StateEntered(state_id=s1, attempt=2, base_snapshot_id=iid),
        StateFailed(state_id=s1, error=orphan),
    ]
    await ms.events.append(RUN, 0, [_env(i + 1, ev) for i, ev in enumerate(events)])
    engine = Engine(
        plan_resolver=lambda m: make_plan([("s1", SetKey())]),
        clock=FakeClock(),
        sleeper=FakeSleeper(),
        run_ids=fixed_run_ids(),
    )
    result = await engine.resume(ms.stores, RUN)
    assert result.phase is RunPhase.COMPLETED
    tail = trace(await read_events(ms.stores, RUN))[len(events) :]
    assert tail[0] == ("E", "s1", 3, iid)
    assert tail[-1][:2] == ("RC", "Completed")
