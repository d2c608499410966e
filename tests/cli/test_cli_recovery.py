""" "Fix it, then resume": a failed run is final, so ``mfm resume`` recovers it as a new run."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import Mfm

from engine.events import DomainEvent, RunCompleted, StateCompleted

pytestmark = pytest.mark.slow


def test_failed_run_is_recovered_after_the_operator_fixes_the_cause(mfm: Mfm, tmp_path: Path) -> None:
    needed = tmp_path / "needed-file"
    failed = mfm("start", "demo_fix", "-p", f"required_file={needed}", "--wait", "--json")
    assert failed.code == 1, failed.err
    failed_id = failed.json()["run_id"]
    assert failed.json()["status"] == "failed"
    before = mfm.read_events(failed_id)

    needed.write_text("fixed\n")  # the fix, outside the tool
    recovered = mfm("resume", failed_id[:8], "--wait", "--json")

    assert recovered.code == 0, recovered.err
    new_id = recovered.json()["run_id"]
    assert new_id != failed_id
    assert recovered.json()["status"] == "completed"
    assert mfm.read_events(failed_id) == before, "the failed run's history is never changed"
    events = mfm.read_events(new_id)
    link = events[1].event
    assert isinstance(link, DomainEvent) and link.name == "recovered_from"
    assert link.payload["source_run_id"] == failed_id  # type: ignore[index, call-overload]
    assert link.payload["failed_state_id"] == "demo.main.check"  # type: ignore[index, call-overload]
    assert sum(isinstance(e.event, StateCompleted) for e in events) == 2
    assert isinstance(events[-1].event, RunCompleted)
    listing = {r["run_id"]: r for r in mfm("runs", "--json").json()}
    assert listing[failed_id]["status"] == "failed" and listing[failed_id]["recovered_by"] == new_id
    assert listing[new_id]["recovered_from"] == failed_id
    assert f"recovered as {new_id[:8]}" in mfm("runs").out


def test_resume_of_a_completed_run_does_nothing(mfm: Mfm, tmp_path: Path) -> None:
    needed = tmp_path / "present"
    needed.write_text("ok\n")
    done = mfm("start", "demo_fix", "-p", f"required_file={needed}", "--wait", "--json")
    assert done.code == 0, done.err
    runs_before = sorted(p.name for p in (mfm.store / "runs").iterdir())
    again = mfm("resume", done.json()["run_id"])
    assert again.code == 4, again.err  # a conflict (README: exit codes)
    assert again.err.startswith("error[run_already_finished]: ") and "nothing to resume" in again.err
    assert sorted(p.name for p in (mfm.store / "runs").iterdir()) == runs_before
