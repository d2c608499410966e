"""Bad input: one line ``error[code]: message`` on stderr, the documented exit code, nothing written."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cli_helpers import Mfm, Result, as_nobody, make_read_only, store_listing

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
    from engine.stores.fs import FsStore

    FsStore(mfm.store).close()
    _one_error(mfm("artifact", "zz12"), 2, "invalid_artifact_id")
    _one_error(mfm("artifact", "1234"), 3, "artifact_not_found")  # a prefix of no artifact
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
    line = _one_error(mfm("runs", "--json", store=False), 3, "store_not_found")  # reading creates nothing
    assert str(tmp_path / "xdg" / "mfm" / "store") in line and not (tmp_path / "xdg").exists()
    assert mfm("start", "demo_big", "-p", "states=1", "-p", "delay_ms=0", "--wait", store=False).code == 0
    assert (tmp_path / "xdg" / "mfm" / "store").is_dir()
    res = mfm("runs", "--json", store=False)
    assert res.code == 0 and len(res.json()) == 1


def test_read_commands_never_create_a_store(tmp_path: Path) -> None:
    """Only commands that write (start, worker, the TUI) create a store; the others say where they looked (exit 3)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    mfm = Mfm(Path("typo"), tmp_path / "home", cwd=cwd)
    run = "aaaa0000-0000-4000-8000-000000000001"
    for args in (
        ["runs"],
        ["runs", "--json"],
        ["show", run],
        ["events", run],
        ["artifact", "0" * 64],
        ["resume", run],
        ["cancel", run],
        ["replay", run],
        ["tui", "--read-only"],
        ["doctor"],
    ):
        line = _one_error(mfm(*args), 3, "store_not_found")
        assert str(cwd / "typo") in line, line
    empty = cwd / "empty"
    empty.mkdir()
    _one_error(Mfm(empty, tmp_path / "home", cwd=cwd)("runs"), 3, "store_not_found")  # a folder, but not a store
    assert sorted(p.name for p in cwd.rglob("*")) == ["empty"]


def test_an_unknown_url_scheme_is_a_usage_error(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    mfm = Mfm(tmp_path / "unused", tmp_path / "home", cwd=cwd)
    for url in ("https://example.com/store", "file:///tmp/store", "sqlite://x", "  HTTP://x"):
        mfm.env["MFM_STORE"] = url
        for args in (["runs"], ["start", "demo_big"], ["doctor"], ["worker", "resume", "0" * 8]):
            line = _one_error(mfm(*args, store=False), 2, "store_url_unsupported")
            assert url.split(":")[0].strip() in line
        del mfm.env["MFM_STORE"]
        _one_error(
            Mfm(tmp_path, tmp_path / "home", cwd=cwd)("--store", url, "show", "x", store=False),
            2,
            "store_url_unsupported",
        )
    assert list(cwd.rglob("*")) == [] and not (tmp_path / "unused").exists()


def test_a_postgres_url_without_psycopg_says_which_extra_to_install(tmp_path: Path) -> None:
    """A ``pip install`` without the ``postgres`` extra: psycopg cannot be imported (simulated: ``None`` in
    ``sys.modules``). One line naming the extra, never a traceback."""
    no_driver = "import sys; sys.modules['psycopg'] = None; from mfm_tui.cli import main; main()"
    env = {k: v for k, v in os.environ.items() if k not in ("MFM_STORE", "XDG_DATA_HOME")}
    env["HOME"] = str(tmp_path)
    for args in (
        ["--store", "postgresql://mfm@db.example/mfm", "runs"],
        ["--store", "postgres://db.example/mfm?mfm_schema=a", "tui"],
        ["worker", "serve", "--store", "postgresql://mfm:pw@db.example/mfm"],
        ["--store", "postgresql://db.example/mfm", "start", "demo_big"],
    ):
        proc = subprocess.run(
            [sys.executable, "-c", no_driver, "--ops", "engine.demo_ops", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        res = Result(proc.returncode, proc.stdout, proc.stderr)
        line = _one_error(res, 2, "store_driver_missing")
        assert "pip install 'mfm-tui[postgres]'" in line and "pw" not in line
    env["MFM_STORE"] = "postgresql://db.example/mfm"
    proc = subprocess.run([sys.executable, "-c", no_driver], capture_output=True, text=True, env=env, timeout=120)
    _one_error(Result(proc.returncode, proc.stdout, proc.stderr), 2, "store_driver_missing")  # bare `mfm`: the TUI


def test_a_read_only_store_can_be_read(mfm: Mfm, tmp_path: Path) -> None:
    """Reading never needs write access: runs, show, events and doctor work on a store this user may only read;
    start and cancel say it is not writable (exit 2); nothing in the store changes. As root, the store is given
    to nobody and read as nobody (root would write anyway)."""
    done = mfm("start", "demo_big", "-p", "states=1", "-p", "delay_ms=0", "--wait", "--json")
    assert done.code == 0, done.err
    run = done.json()["run_id"]
    base = Path(tempfile.mkdtemp(prefix="mfm-ro-cli-", dir="/tmp"))
    try:
        base.chmod(0o755)
        store = base / "store"
        shutil.copytree(mfm.store, store)
        root = os.geteuid() == 0
        make_read_only(store, owner=65534 if root else None)
        before = store_listing(store)

        def call(*args: str) -> Result:
            argv = ["--store", str(store), "--ops", "engine.demo_ops", *args]
            return as_nobody(argv) if root else Mfm(store, tmp_path / "home")(*args)

        listed = call("runs", "--json")
        assert listed.code == 0 and run in listed.out, listed.out
        shown = call("show", run[:8], "--json")
        assert shown.code == 0 and '"completed"' in shown.out, shown.out
        events = call("events", run[:8], "--json")
        assert events.code == 0 and events.out.count("\n") >= 4, events.out
        doctor = call("doctor")
        assert doctor.code == 0, doctor.out
        for args in (("start", "demo_big"), ("cancel", run[:8]), ("resume", run[:8])):
            res = call(*args)
            assert res.code == 2 and "error[store_not_writable]" in (res.err or res.out), res.out
        assert store_listing(store) == before
    finally:
        for p in [base, *base.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(base)
