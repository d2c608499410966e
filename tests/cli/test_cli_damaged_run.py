"""A finished run whose log is later damaged in the middle, seen from the command line: `show` and `runs` tell what
the readable prefix says and no more (issue 12: reads say that they stopped, exit 6)."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import Mfm


def _flip_a_digit_mid_log(path: Path) -> None:
    """Change one digit of the seq of an event record in the middle of the log: its checksum no longer matches."""
    lines = path.read_bytes().split(b"\n")
    i = len(lines) // 2
    while b'"seq":' not in lines[i]:
        i += 1
    line = bytearray(lines[i])
    at = line.index(b'"seq":') + len(b'"seq":')
    line[at] = ord("8") if line[at] == ord("9") else ord("9")
    lines[i] = bytes(line)
    path.write_bytes(b"\n".join(lines))


def test_a_damaged_finished_run_is_shown_as_damaged_with_unknown_states_and_exit_6(mfm: Mfm) -> None:
    done = mfm("start", "demo_pipeline", "-p", "words=ab,cde", "--wait", "--json")
    assert done.code == 0, done.err
    run_id = done.json()["run_id"]
    _flip_a_digit_mid_log(mfm.store / "runs" / run_id / "events.jsonl")

    shown = mfm("show", run_id[:8])
    assert shown.code == 6, shown.err
    assert "status    damaged" in shown.out
    assert "duration -" in shown.out  # it was counting up to now, as if still running
    states = {ln.split()[0]: ln.split()[1] for ln in shown.out.splitlines() if ln.startswith("demo.main.")}
    assert states["demo.main.fetch"] == "completed"  # finished inside the readable prefix
    assert states["demo.main.publish"] == "unknown"  # was "pending": its events are past the damage
    assert "running" not in states.values() and "pending" not in states.values()
    (err,) = shown.err.strip().splitlines()
    assert err.startswith(f"error[run_log_corrupt]: run {run_id}: ")

    as_json = mfm("show", run_id[:8], "--json")
    assert as_json.code == 6
    out = as_json.json()
    assert out["status"] == "damaged" and out["duration_millis"] is None
    assert out["damage"]["code"] == "run_log_corrupt" and "see `mfm doctor`" in out["damage"]["message"]
    assert {s["status"] for s in out["states"]} <= {"completed", "unknown"}

    listing = mfm("runs")
    assert listing.code == 6
    (row,) = [ln for ln in listing.out.splitlines() if ln.startswith(run_id[:8])]
    cells = row.split()
    assert cells[2] == "damaged" and cells[5] == "-" and cells[6] == "-"  # duration and state: unknown
    assert json.loads(mfm("runs", "--json").out)[0]["duration_millis"] is None
