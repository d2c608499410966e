"""From the outside: a run whose worker dies before ``RunStarted`` (listed, shown, resumed or discarded by prefix) and a
handler that kills its worker every time (crash-looping after K consecutive orphan recoveries; an explicit resume
still runs it). Operations from ``tests/crash_ops.py``."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
from cli_helpers import Mfm, wait_until

from engine.events import RunCompleted

pytestmark = pytest.mark.slow

CRASH_OPS = str(Path(__file__).resolve().parents[1] / "crash_ops.py")
OPS = ("engine.demo_ops", CRASH_OPS)


def _lease_free(mfm: Mfm, run_id: str) -> bool:
    """Whether no process holds the run's lease (its worker is gone)."""
    fd = os.open(mfm.store / "runs" / run_id / "lease", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _start(mfm: Mfm, op: str, gate: Path) -> str:
    res = mfm("start", op, "-p", f"gate={gate}", "--json", ops=OPS)
    assert res.code == 0, res.err
    run_id: str = res.json()["run_id"]
    wait_until(lambda: _lease_free(mfm, run_id), what="the worker to die")
    return run_id


def test_a_run_whose_worker_died_before_run_started_is_listed_shown_and_resumed_by_prefix(
    mfm: Mfm, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    run_id = _start(mfm, "die_before_start", gate)
    short = run_id[:8]
    assert mfm.read_events(run_id) == []

    listing = mfm("runs", ops=OPS)
    assert listing.code == 0, listing.err
    [row] = [ln for ln in listing.out.splitlines() if ln.startswith(short)]
    assert "die_before_start" in row and "not started: worker lost" in row
    assert [r["status"] for r in mfm("runs", "--json", ops=OPS).json()] == ["not_started"]

    shown = mfm("show", short, ops=OPS)
    assert shown.code == 0, shown.err
    assert "status    not started: worker lost" in shown.out
    assert f"`mfm resume {short}` starts it again; `mfm discard {short}` removes it" in shown.out
    assert mfm("events", short, ops=OPS).code == 0

    doctor = mfm("doctor", ops=OPS)
    assert doctor.code == 1 and f"`mfm resume {short}`" in doctor.out

    gate.touch()
    resumed = mfm("resume", short, "--wait", "--json", ops=OPS)
    assert resumed.code == 0, resumed.err
    assert resumed.json()["status"] == "completed"
    assert mfm("doctor", ops=OPS).code == 0


def test_discard_removes_a_run_that_never_started_and_refuses_any_other(mfm: Mfm, tmp_path: Path) -> None:
    run_id = _start(mfm, "die_before_start", tmp_path / "gate")
    short = run_id[:8]

    lease = os.open(mfm.store / "runs" / run_id / "lease", os.O_RDWR)
    try:
        fcntl.flock(lease, fcntl.LOCK_EX)  # as a worker starting it would
        assert mfm("show", short, "--json", ops=OPS).json()["status"] == "starting"
        busy = mfm("discard", short, ops=OPS)
        assert busy.code == 4 and busy.err_lines[0].startswith("error[lease_held]: ")
    finally:
        os.close(lease)

    done = mfm("start", "demo_flaky", "-p", "fail_times=0", "--wait", "--json", ops=OPS)
    assert done.code == 0, done.err
    refused = mfm("discard", done.json()["run_id"][:8], ops=OPS)
    assert refused.code == 4 and refused.err_lines == [refused.err_lines[0]]
    assert refused.err_lines[0].startswith("error[run_already_started]: ")

    gone = mfm("discard", short, ops=OPS)
    assert gone.code == 0, gone.err
    assert "quarantine" in gone.out and not (mfm.store / "runs" / run_id).exists()
    assert short not in mfm("runs", ops=OPS).out
    again = mfm("discard", short, ops=OPS)
    assert again.code == 3 and again.err_lines[0].startswith("error[run_not_found]: ")
    assert mfm("doctor", ops=OPS).code == 0


def test_a_handler_that_kills_its_worker_is_crash_looping_after_k_resumes_and_an_explicit_resume_still_runs(
    mfm: Mfm, tmp_path: Path
) -> None:
    mfm.env["MFM_MAX_ORPHAN_RECOVERIES"] = "2"
    gate = tmp_path / "gate"
    run_id = _start(mfm, "crash_loop", gate)
    short = run_id[:8]
    statuses = [mfm("show", short, "--json", ops=OPS).json()["status"]]
    for _ in range(2):  # each resume closes the orphan attempt (orphan_attempt_recovered), and dies again
        res = mfm("resume", short, ops=OPS)
        assert res.code == 0, res.err
        wait_until(lambda: _lease_free(mfm, run_id), what="the resumed worker to die")
        statuses.append(mfm("show", short, "--json", ops=OPS).json()["status"])
    assert statuses == ["worker_lost", "worker_lost", "crash_looping"]

    listing = mfm("runs", ops=OPS)
    [row] = [ln for ln in listing.out.splitlines() if ln.startswith(short)]
    assert "crash-looping at boom" in row
    shown = mfm("show", short, ops=OPS)
    assert shown.code == 0, shown.err
    assert "status    crash-looping at boom" in shown.out
    assert "2 consecutive orphan recoveries at machine.main.boom (limit 2)" in shown.out
    assert "(last lines of its worker log)" in shown.out and "resuming run" in shown.out
    assert "hunter2" not in shown.out  # the handler printed a secret-looking line before dying: withheld
    as_json = mfm("show", short, "--json", ops=OPS).json()
    assert as_json["crash_loop"] == {"state_id": "machine.main.boom", "orphan_recoveries": 2, "limit": 2}
    assert any("withheld" in line for line in as_json["worker_log"])
    assert "hunter2" not in str(as_json)

    gate.touch()  # the cause is fixed: an explicit resume still works (and resets the count)
    resumed = mfm("resume", short, "--wait", "--json", ops=OPS)
    assert resumed.code == 0, resumed.err
    assert resumed.json()["status"] == "completed" and resumed.json()["crash_loop"] is None
    kinds = [e.kind for e in mfm.read_events(run_id)]
    assert kinds.count("crash_loop_reset") == 1 and isinstance(mfm.read_events(run_id)[-1].event, RunCompleted)


def test_an_invalid_crash_loop_limit_is_a_usage_error(mfm: Mfm) -> None:
    mfm.env["MFM_MAX_ORPHAN_RECOVERIES"] = "lots"
    res = mfm("runs", ops=OPS)
    assert res.code == 2 and res.err_lines == [res.err_lines[0]]
    assert res.err_lines[0].startswith("error[usage]: MFM_MAX_ORPHAN_RECOVERIES must be a positive integer")


def test_events_follow_on_a_run_that_never_started_ends_with_worker_lost(mfm: Mfm, tmp_path: Path) -> None:
    """`events --follow` stops when no worker will ever append (it followed such a run forever before)."""
    run_id = _start(mfm, "die_before_start", tmp_path / "gate")
    res = mfm("events", run_id[:8], "--follow", ops=OPS, timeout=30)
    assert res.code == 1, res.err
    assert res.out == ""
    assert res.err.startswith(f"error[worker_lost]: the worker of run {run_id} exited without finishing it (")
    assert res.err.rstrip().endswith(f"then `mfm resume {run_id[:8]}`")
    assert len(res.err.strip().splitlines()) == 1
