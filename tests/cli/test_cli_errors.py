"""Bad input: one line ``error[code]: message`` on stderr, the documented exit code, nothing written."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from cli_helpers import Mfm, Result, store_listing

from engine.events import EventEnvelope, RunStarted
from engine.ids import ArtifactId, OpId, RunId

ZERO = ArtifactId("0" * 64)


def _one_error(res: Result, code: int, error_code: str) -> str:
    assert res.code == code, (res.code, res.out, res.err)
    assert len(res.err_lines) == 1, res.err
    line = res.err_lines[0]
    assert line.startswith(f"error[{error_code}]: "), line
    assert "Traceback" not in res.err
    return line


def _seed_runs(store: Path, *run_ids: str) -> None:
    from engine.stores.fs import FsStore

    async def go() -> None:
        fs = FsStore(store)
        for rid in run_ids:
            env = EventEnvelope(
                run_id=RunId(rid),
                seq=1,
                ts_millis=1,
                event=RunStarted(op_id=OpId("demo_big"), manifest_id=ZERO, initial_snapshot_id=ZERO),
            )
            await fs.events.append(RunId(rid), 0, [env])

    asyncio.run(go())


def test_help_documents_exit_codes(mfm: Mfm) -> None:
    res = mfm("--help")
    assert res.code == 0
    for text in ("Exit codes", "0  ok", "2  usage", "3  not found", "4  conflict"):
        assert text in res.out


def test_bad_start_input_writes_nothing(mfm: Mfm, tmp_path: Path) -> None:
    line = _one_error(mfm("start", "no_such_op"), 3, "unknown_operation")
    assert "demo_flaky" in line  # names the known operations
    line = _one_error(mfm("start", "demo_flaky", "-p", "fail_times=abc", "-p", "max_attempts=0"), 2, "invalid_params")
    assert "fail_times" in line and "max_attempts" in line
    _one_error(mfm("start", "demo_flaky", "-p", "fail_times"), 2, "invalid_params")
    _one_error(mfm("start", "demo_side_effect"), 2, "invalid_params")  # folder is required
    bad_file = tmp_path / "params.json"
    bad_file.write_text("{not json")
    _one_error(mfm("start", "demo_flaky", "--params-file", str(bad_file)), 2, "params_file_invalid")
    bad_file.write_text('{"fail_times": -0}')  # serde_json reads -0 as a float
    line = _one_error(mfm("start", "demo_flaky", "--params-file", str(bad_file)), 2, "invalid_params")
    assert "fail_times: floats are not allowed" in line
    _one_error(mfm("start", "demo_flaky", "-p", "fail_times=-0"), 2, "invalid_params")
    _one_error(mfm("start", "demo_flaky", "-p", "fail_times=1.0"), 2, "invalid_params")
    _one_error(mfm("start", "demo_flaky", "--no-such-option"), 2, "usage")
    assert not mfm.store.exists()
    # and on an existing store: the listing is unchanged
    ok = mfm("start", "demo_big", "-p", "states=1", "-p", "delay_ms=0", "--wait")
    assert ok.code == 0, ok.err
    before = store_listing(mfm.store)
    _one_error(mfm("start", "demo_flaky", "-p", "fail_times=-1"), 2, "invalid_params")
    _one_error(mfm("start", "nope"), 3, "unknown_operation")
    assert store_listing(mfm.store) == before


def test_params_file_and_p_override(mfm: Mfm, tmp_path: Path) -> None:
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"states": 1, "delay_ms": 999}))
    res = mfm("start", "demo_big", "--params-file", str(params), "-p", "delay_ms=0", "--wait", "--json")
    assert res.code == 0, res.err
    manifest_id = res.json()["manifest_id"]
    manifest = mfm("artifact", manifest_id).json()
    assert manifest["input_params"] == {"states": 1, "events": 5, "delay_ms": 0}


def test_run_prefixes_ambiguous_and_unknown(mfm: Mfm) -> None:
    a = "aaaa0000-0000-4000-8000-000000000001"
    b = "aaaa1111-0000-4000-8000-000000000002"
    _seed_runs(mfm.store, a, b)
    before = store_listing(mfm.store)
    line = _one_error(mfm("show", "aaaa"), 2, "run_id_ambiguous")
    assert "aaaa0000" in line and "aaaa1111" in line
    _one_error(mfm("events", "ffff"), 3, "run_not_found")
    _one_error(mfm("resume", "ffff"), 3, "run_not_found")
    _one_error(mfm("cancel", "zz-not-hex"), 3, "run_not_found")
    assert mfm("show", "aaaa0", "--json").json()["run_id"] == a
    assert store_listing(mfm.store) == before


def test_artifact_errors(mfm: Mfm) -> None:
    mfm.store.mkdir(parents=True)
    _one_error(mfm("artifact", "1234"), 2, "invalid_artifact_id")
    _one_error(mfm("artifact", str(ZERO)), 3, "artifact_not_found")


def test_resume_of_live_run_and_cancel_of_finished_run_conflict(mfm: Mfm) -> None:
    live = mfm.start("demo_big", "states=500", "delay_ms=50")
    _one_error(mfm("resume", live), 4, "lease_held")
    assert mfm("cancel", live).code == 0
    done = mfm("start", "demo_big", "-p", "states=1", "-p", "delay_ms=0", "--wait", "--json").json()["run_id"]
    before = store_listing(mfm.store)
    line = _one_error(mfm("cancel", done), 4, "run_already_finished")
    assert done in line
    assert store_listing(mfm.store) == before


def test_unreadable_store(mfm: Mfm, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    res = Mfm(not_a_dir, tmp_path / "home")("runs")
    assert res.code == 2 and len(res.err_lines) == 1 and res.err_lines[0].startswith("error[")
    assert not_a_dir.read_text() == "x"
    debug = Mfm(not_a_dir, tmp_path / "home")("--debug", "runs")
    assert debug.code == 2 and "Traceback" in debug.err


def test_store_from_environment(mfm: Mfm, tmp_path: Path) -> None:
    env_store = tmp_path / "env-store"
    mfm.env["MFM_STORE"] = str(env_store)
    res = mfm("start", "demo_big", "-p", "states=1", "-p", "delay_ms=0", "--wait", "--json", store=False)
    assert res.code == 0, res.err
    assert (env_store / "runs" / res.json()["run_id"]).is_dir()
    del mfm.env["MFM_STORE"]
    mfm.env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    res = mfm("runs", "--json", store=False)
    assert res.code == 0 and res.json() == []
    assert (tmp_path / "xdg" / "mfm" / "store").is_dir()
