"""``mfm doctor``: every finding on a store damaged on purpose, read-only checking, ``--repair`` that only moves."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.doctor import check_store, repair_store
from engine.events import RunCompleted, StateCompleted, StateEntered
from engine.ids import ArtifactId, RunId
from engine.runtime import Engine
from engine.stores.fs import FsStore
from engine.testing import FakeClock, FakeSleeper, SetKey, WriteKey, base_config, make_plan, start_plan
from mfm_tui.cli import main


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes and mode (to prove the check changed nothing)."""
    out: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        key = f"{path.relative_to(root)}:{oct(st.st_mode)}"
        out[key] = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
    return out


async def make_run(root: Path, *, states: int = 3, version: int = 2) -> tuple[FsStore, RunId]:
    store = FsStore(root, new_version=version)
    plan = make_plan([(f"s{i}", WriteKey(f"k{i}", i)) for i in range(states)])
    engine = Engine(plan_resolver=lambda m: plan, clock=FakeClock(), sleeper=FakeSleeper())
    result = await start_plan(engine, store.stores, plan, base_config())
    return store, result.run_id


def events_file(root: Path, run_id: RunId) -> Path:
    return root / "runs" / run_id / "events.jsonl"


def codes(root: Path) -> list[str]:
    return check_store(root).codes()


async def test_clean_store_is_ok_and_check_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    await make_run(root)
    before = snapshot(root)
    report = check_store(root)
    assert report.ok, [f.one_line() for f in report.findings]
    assert report.runs_checked == 1 and report.events_checked == 8 and report.artifacts_checked >= 4
    assert snapshot(root) == before


async def test_torn_tail_is_reported_then_moved_to_quarantine(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _, run_id = await make_run(root)
    path = events_file(root, run_id)
    good = path.read_bytes()
    torn = b'{"run_id":"' + run_id.encode() + b'","seq":9,"ts_millis":1,"event":{"Domain":{"na'
    with open(path, "ab") as f:
        f.write(torn)
    before = snapshot(root)
    report = check_store(root)
    assert report.codes() == ["torn_tail"]
    (finding,) = report.findings
    assert finding.severity == "warning" and finding.repairable and finding.seq == 9
    assert snapshot(root) == before  # checking alone moves nothing
    moved = repair_store(root, report)
    assert [m.what for m in moved] == ["torn_tail"] and moved[0].size == len(torn)
    assert path.read_bytes() == good
    assert (root / moved[0].destination).read_bytes() == torn  # moved, not deleted
    assert check_store(root).ok
    assert len(await FsStore(root).events.read_range(run_id, 1)) == 8


async def test_continuation_lines_without_their_final_line_are_a_torn_tail(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store, run_id = await make_run(root)
    envs = await store.events.read_range(run_id, 1)
    extra = envs[-1].model_copy(update={"seq": 9})
    with open(events_file(root, run_id), "ab") as f:
        f.write(extra.to_json().encode() + b" \n")  # the first line of a two-line batch, then the crash
    assert codes(root) == ["torn_tail"]


async def test_damage_in_the_middle_is_an_error_repair_leaves_alone(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _, run_id = await make_run(root, version=1)  # a version-1 log: an edited line is judged by its JSON
    path = events_file(root, run_id)
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"seq":3', b'"seq":3,,')
    path.write_bytes(b"\n".join(lines))
    report = check_store(root)
    assert report.codes() == ["event_line_undecodable"]
    assert report.findings[0].severity == "error" and not report.findings[0].repairable
    assert "valid event line(s) follow" in report.findings[0].message
    before = path.read_bytes()
    assert repair_store(root, report) == []
    assert path.read_bytes() == before


async def test_missing_line_is_a_seq_gap(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _, run_id = await make_run(root)
    path = events_file(root, run_id)
    lines = path.read_bytes().split(b"\n")
    (third,) = [i for i, line in enumerate(lines) if b'"seq":3,' in line]
    del lines[third]  # StateCompleted(s0), the first event of the commit [snapshot blob, C(s0), E(s1)]
    path.write_bytes(b"\n".join(lines))
    report = check_store(root)
    assert report.codes() == ["event_seq_gap"]
    assert report.findings[0].seq == 3


async def test_foreign_run_id_inside_a_run_file(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _, run_id = await make_run(root, version=1)  # a version-1 log: an edited line is judged by its JSON
    _, other = await make_run(root)
    path = events_file(root, run_id)
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(run_id.encode(), other.encode())
    path.write_bytes(b"\n".join(lines))
    assert codes(root) == ["event_run_id_mismatch"]


async def test_attempt_envelope_violation_uses_the_runtime_analysis(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store, run_id = await make_run(root, states=1)
    envs = await store.events.read_range(run_id, 1)
    # RS, E(s0), C(s0), RC → rewrite as RS, E(s0), E(s0) (nested), C(s0), RC
    entered = envs[1]
    assert isinstance(entered.event, StateEntered)
    bad = [envs[0], entered, entered.model_copy(update={"seq": 3})]
    bad += [e.model_copy(update={"seq": e.seq + 1}) for e in envs[2:]]
    other = RunId("33333333-3333-4333-8333-333333333333")
    await store.events.append(other, 0, [e.model_copy(update={"run_id": other}) for e in bad])
    report = check_store(root, [other])
    assert report.codes() == ["attempt_envelope_invalid"]
    assert report.findings[0].seq == 3 and report.findings[0].details["violation"] == "NestedAttempt"


async def test_missing_and_damaged_artifacts(tmp_path: Path) -> None:
    """A version-1 store keeps snapshots as files only: a missing or damaged one is lost (in version 2 the run log
    holds them and the files are copies, ``artifact_copy_*``: tests/engine/test_store_fs_damage.py)."""
    root = tmp_path / "store"
    store, run_id = await make_run(root, version=1)
    envs = await store.events.read_range(run_id, 1)
    completed = [e.event for e in envs if isinstance(e.event, StateCompleted)]
    final = next(e.event for e in envs if isinstance(e.event, RunCompleted)).final_snapshot_id
    assert final is not None
    gone = completed[0].context_snapshot_id
    (root / "artifacts" / gone[:2] / gone).unlink()
    damaged = root / "artifacts" / final[:2] / final
    damaged.chmod(0o600)
    damaged.write_bytes(damaged.read_bytes() + b" ")
    report = check_store(root)
    assert sorted(report.codes()) == ["artifact_hash_mismatch", "artifact_missing"]
    (missing,) = [f for f in report.findings if f.code == "artifact_missing"]
    assert missing.details["field"] == "StateCompleted.context_snapshot_id"  # its first reference
    assert missing.details["artifact_id"] == gone and missing.details["references"] == 2  # + StateEntered.base
    # a run given by name checks the artifacts it refers to
    assert sorted(check_store(root, [run_id]).codes()) == sorted(report.codes())


async def test_fact_payload_reference_is_checked(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FsStore(root, new_version=1)  # a payload only in its file (version 2: also in the run log)
    from engine.io import IoCall
    from engine.testing import CountingFactory, FnState

    async def call(ctx: Any, io: Any, rec: Any) -> None:
        await io.call(IoCall(namespace="test", request={"q": 1}, fact_key="k"))

    plan = make_plan([("s0", FnState(fn=call))])
    engine = Engine(plan_resolver=lambda m: plan, transports=[CountingFactory()], clock=FakeClock())
    result = await start_plan(engine, store.stores, plan, base_config())
    envs = await store.events.read_range(result.run_id, 1)
    fact = next(e.event for e in envs if getattr(e.event, "name", None) == "fact_recorded")
    pid = fact.payload["payload_id"]  # type: ignore[union-attr,index]
    (root / "artifacts" / pid[:2] / pid).unlink()
    report = check_store(root)
    assert report.codes() == ["artifact_missing"]
    assert report.findings[0].details["field"] == "fact_recorded.payload_id"


async def test_stale_lease_and_live_lease(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FsStore(root)
    plan = make_plan([("s0", SetKey())])
    engine = Engine(plan_resolver=lambda m: plan, clock=FakeClock(), sleeper=FakeSleeper())
    from engine.runtime import Failpoints

    engine = Engine(plan_resolver=lambda m: plan, clock=FakeClock(), failpoints=Failpoints.stop_after_handler())
    result = await start_plan(engine, store.stores, plan, base_config())
    lease = root / "runs" / result.run_id / "lease"
    fd = os.open(lease, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert check_store(root).ok  # a live worker holds it
        fcntl.flock(fd, fcntl.LOCK_UN)
        report = check_store(root)
        assert report.codes() == ["stale_lease"]
        assert "mfm resume" in report.findings[0].message
    finally:
        os.close(fd)


def test_worker_lost_before_run_started_is_a_stale_lease(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FsStore(root).close()
    run_dir = root / "runs" / "55555555-5555-4555-8555-555555555555"
    run_dir.mkdir(mode=0o700)
    (run_dir / "lease").write_bytes(b"{}")
    (run_dir / "lease").chmod(0o600)
    # A free lease alone: the start failed before its start record (a launcher holds the lease from the moment it
    # creates it until the worker has written RunStarted), e.g. on a full disk.
    assert check_store(root).codes() == ["run_dir_empty"]
    (run_dir / "start.json").write_bytes(b"{}")
    (run_dir / "start.json").chmod(0o600)
    report = check_store(root)
    assert report.codes() == ["stale_lease"] and "before RunStarted" in report.findings[0].message
    (run_dir / f".start.json.{os.getpid()}").write_bytes(b"{")  # being written by a live process: not debris
    (run_dir / f".start.json.{os.getpid()}").chmod(0o600)
    assert check_store(root).codes() == ["stale_lease"]


async def test_unfinished_batch_of_a_live_appender_is_not_damage(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _, run_id = await make_run(root)
    with open(events_file(root, run_id), "ab") as f:
        f.write(b'{"run_id":"')
    lock = os.open(root / "runs" / run_id / "events.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # an append in progress in "another process" (another open file)
        assert check_store(root).ok
    finally:
        os.close(lock)
    assert codes(root) == ["torn_tail"]


async def test_leftover_temp_file_is_moved_by_repair(tmp_path: Path) -> None:
    root = tmp_path / "store"
    await make_run(root)
    fan = next(p for p in (root / "artifacts").iterdir() if p.is_dir())
    dead_pid = 2**22 + 12345  # above pid_max: no such process
    tmp = fan / f".tmp-abcdef-{dead_pid}-0"
    tmp.write_bytes(b"half an artifact")
    tmp.chmod(0o600)
    live = fan / f".tmp-abcdef-{os.getpid()}-1"  # a write in progress in a live process: not debris
    live.write_bytes(b"being written")
    live.chmod(0o600)
    report = check_store(root)
    assert report.codes() == ["temp_file"]
    moved = repair_store(root, report)
    assert len(moved) == 1 and not tmp.exists() and live.exists()
    assert (root / moved[0].destination).read_bytes() == b"half an artifact"
    live.unlink()
    assert check_store(root).ok


async def test_symlink_and_modes_and_stray_names(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _, run_id = await make_run(root)
    outside = tmp_path / "outside.jsonl"
    path = events_file(root, run_id)
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)
    (root / "runs" / "not-a-run").mkdir(mode=0o700)
    fan = next(p for p in (root / "artifacts").iterdir() if p.is_dir())
    (fan / "notes.txt").write_bytes(b"x")
    (root / "runs" / run_id).chmod(0o755)
    report = check_store(root)
    assert sorted(report.codes()) == [
        "artifact_name_invalid",
        "permissions_too_open",
        "run_dir_invalid",
        "symlink_in_store",
        "symlink_in_store",
    ]


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    exit_code: int
    output: str


def mfm(root: Path, *args: str) -> Outcome:
    """``mfm --store ROOT doctor ARGS`` through the real entry point (its exit codes), output captured."""
    runner = CliRunner()
    with runner.isolation() as (out, _err, *_):
        try:
            main(["--store", str(root), "doctor", *args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        return Outcome(code, out.getvalue().decode())


async def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _, run_id = await make_run(root)
    ok = mfm(root)
    assert ok.exit_code == 0 and "no problems found" in ok.output
    assert mfm(root, run_id[:8]).exit_code == 0
    with open(events_file(root, run_id), "ab") as f:
        f.write(b"{broken")
    bad = mfm(root, "--json")
    assert bad.exit_code == 1
    body = json.loads(bad.output)
    assert body["ok"] is False and [f["code"] for f in body["findings"]] == ["torn_tail"]
    text = mfm(root)
    assert text.exit_code == 1 and "warning[torn_tail]" in text.output and "--repair" in text.output
    fixed = mfm(root, "--repair")
    assert fixed.exit_code == 0 and "moved runs/" in fixed.output and "no problems remain" in fixed.output
    assert mfm(root).exit_code == 0
    assert mfm(root, "ffffffff").exit_code == 3
    missing = tmp_path / "nowhere"
    assert mfm(missing).exit_code == 3
    assert not missing.exists()  # doctor never creates a store


@pytest.mark.parametrize("flip_at", [0.1, 0.5, 0.9])
async def test_artifact_hash_check_covers_every_byte(tmp_path: Path, flip_at: float) -> None:
    root = tmp_path / "store"
    store = FsStore(root)
    from engine._kinds import ArtifactKind

    data = bytes(range(256)) * 40
    aid = await store.artifacts.put(ArtifactKind.OUTPUT, data)
    assert aid == ArtifactId(hashlib.sha256(data).hexdigest())
    path = root / "artifacts" / aid[:2] / aid
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * flip_at)] ^= 0x01
    path.write_bytes(bytes(raw))
    assert codes(root) == ["artifact_hash_mismatch"]
