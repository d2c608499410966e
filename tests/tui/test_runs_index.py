"""The store-wide runs index (issue 15): the runs list of a big store reads one file instead of a ``summary.json`` per
run, and the index is only a cache: deleted, damaged, of another version, stale (a run appended by another process
after it was written), with a new run or a deleted one, the list is still right; a read-only store is never written.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import engine.stores.fs.safe_paths as safe_paths
import tests.tui.fixtures as fx
from engine.events import DomainEvent, EventEnvelope, RunCompleted, RunStatus
from engine.ids import RunId
from engine.run_summary import LazyStates, from_index_form, index_form
from engine.stores.fs import FsStore
from engine.stores.fs._events import INDEX_WRITER
from engine.stores.fs.framing import RUNS_INDEX_FILE, SUMMARY_FILE
from mfm_tui.run_model import RunDisplayStatus, RunModel
from mfm_tui.store_watcher import FIRST_SCREENFUL, StoreWatcher

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    """bench/tui.py: its direct store writer makes hundreds of runs in a blink."""
    spec = importlib.util.spec_from_file_location("mfm_bench_tui_index", ROOT / "bench" / "tui.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def _make(root: Path, n: int) -> list[str]:
    """``n`` small runs (mixed statuses) written directly, then each run's summary.json as appends leave it."""
    run_ids, _ = _bench().make_store(root, n, 0, warm=False)
    store = FsStore(root, create=False)
    for run_id in run_ids:
        await store.events.run_summary(RunId(run_id))
    store.close()
    return list(run_ids)


def _row(model: RunModel, now: int) -> tuple[Any, ...]:
    """What a runs-list row shows of a model, and whether it is still indexing or unreadable."""
    return (*fx.list_row(model, now), model.indexing, model.load_error)


class Opens:
    """Which store files the process opens for reading (``safe_paths.open_file``: every read of the store)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        real = safe_paths.open_file

        def counted(dir_fd: int, name: str, *args: Any, **kwargs: Any) -> int:
            self.names.append(name)
            return real(dir_fd, name, *args, **kwargs)

        monkeypatch.setattr(safe_paths, "open_file", counted)

    def count(self, name: str) -> int:
        return self.names.count(name)


async def _rows(root: Path, f: fx.FixtureStore | None = None) -> dict[RunId, tuple[Any, ...]]:
    """Every run's row as a fresh TUI loads it (a new store object: nothing in memory)."""
    store = FsStore(root, create=False)
    watcher = StoreWatcher(
        store,
        use_watchfiles=False,
        lease_probe=None if f is None else f.lease_probe,
        plan_resolver=None if f is None else f.plan_resolver,
    )
    await watcher.load()
    await watcher.wait_indexed()
    await watcher.poll()
    now = fx.fixture_clock().now_millis()
    rows = {r: _row(m, now) for r, m in watcher.models.items()}
    _index_written()
    store.close()
    return rows


def _index_written() -> None:
    """Wait for the thread that writes a stale index after the runs were handed over."""
    for thread in threading.enumerate():
        if thread.name == INDEX_WRITER:
            thread.join()


async def _rows_without_index(root: Path, f: fx.FixtureStore | None = None) -> dict[RunId, tuple[Any, ...]]:
    """The same, from a copy of the store without its index (every summary read or folded on its own)."""
    copy = root.parent / f"{root.name}-noindex"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root, copy, symlinks=True)
    index = copy / RUNS_INDEX_FILE
    if index.is_dir():
        index.rmdir()
    index.unlink(missing_ok=True)
    for summary in (copy / "runs").glob(f"*/{SUMMARY_FILE}"):
        summary.unlink()
    return await _rows(copy, f)


async def _fixture(tmp_path: Path) -> tuple[Path, fx.FixtureStore]:
    root = tmp_path / "store"
    f = await fx.build_fixture_store(FsStore(root))
    await _rows(root, f)  # the first load writes the index
    assert (root / RUNS_INDEX_FILE).exists()
    return root, f


# ---------------------------------------------------------------------------------------------- one read


async def test_the_first_load_of_a_many_run_store_reads_the_index_once_and_no_run_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "many"
    run_ids = await _make(root, 400)  # a 10,000-run store, smaller: every summary.json warm
    first = await _rows(root)  # writes the index
    assert len(first) == 400
    opens = Opens(monkeypatch)
    rows = await _rows(root)
    assert opens.count(RUNS_INDEX_FILE) == 1
    assert opens.count(SUMMARY_FILE) == 0  # the code before read 400 (one per run)
    assert opens.count("events.jsonl") < 400 // 4  # only the unfinished or failed runs (cancel, damage checks)
    assert rows == first
    monkeypatch.undo()
    assert rows == await _rows_without_index(root)
    assert sorted(rows) == sorted(run_ids)


async def test_without_an_index_the_first_screenful_comes_before_every_summary_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store's first open (no runs.index yet): the first batch holds the runs whose logs changed last, after
    reading a screenful of summaries; before, it came only once all 400 (10,000: 0.25 -> 1.65 s) were read."""
    root = tmp_path / "many"
    run_ids = await _make(root, 400)
    for age, run_id in enumerate(run_ids):  # the last made changed last
        os.utime(root / "runs" / run_id / "events.jsonl", ns=(10**18 + age * 10**9,) * 2)
    assert not (root / RUNS_INDEX_FILE).exists()
    store = FsStore(root, create=False)
    watcher = StoreWatcher(store, use_watchfiles=False)
    opens = Opens(monkeypatch)
    batches = watcher.load_batches()
    first = await anext(batches)
    assert 0 < opens.count(SUMMARY_FILE) <= FIRST_SCREENFUL
    assert first.updated == set(run_ids[-FIRST_SCREENFUL:])
    async for _ in batches:
        pass
    assert set(watcher.models) == set(run_ids)
    _index_written()
    store.close()


async def test_rows_from_the_index_match_rows_folded_from_every_event_for_every_status(tmp_path: Path) -> None:
    root, f = await _fixture(tmp_path)
    store = FsStore(root, create=False)
    found = store.events.runs_index.summaries()
    assert found.from_index == len(found.run_ids) == 9 and not found.written
    rows = await _rows(root, f)
    assert rows == await _rows_without_index(root, f)
    statuses = {r[0] for r in rows.values()}
    assert {RunDisplayStatus.FAILED, RunDisplayStatus.COMPLETED, RunDisplayStatus.RETRYING} <= statuses


# ---------------------------------------------------------------------------------------------- only a cache


@pytest.mark.parametrize(
    "spoil",
    ["delete", "truncate", "flip a byte", "another version", "garbage", "empty", "a folder"],
)
async def test_a_missing_or_damaged_index_is_ignored_and_written_again(tmp_path: Path, spoil: str) -> None:
    root, f = await _fixture(tmp_path)
    path = root / RUNS_INDEX_FILE
    data = path.read_bytes()
    if spoil == "delete":
        path.unlink()
    elif spoil == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif spoil == "flip a byte":
        at = len(data) * 2 // 3
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :])
    elif spoil == "another version":
        path.write_bytes(data.replace(b"mfm-runs-index 1 ", b"mfm-runs-index 99 ", 1))
    elif spoil == "garbage":
        path.write_bytes(b"mfm-runs-index 1 2 0 3 1\n[x]")
    elif spoil == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
        path.mkdir()
    expected = await _rows_without_index(root, f)
    assert await _rows(root, f) == expected
    if spoil != "a folder":
        assert path.read_bytes() == data  # rewritten: the same runs, the same bytes
        assert FsStore(root, create=False).events.runs_index.summaries().from_index == 9


async def test_a_run_appended_by_another_process_after_the_index_was_written_shows_its_new_events(
    tmp_path: Path,
) -> None:
    root = tmp_path / "many"
    run_ids = await _make(root, 30)
    await _rows(root)
    index = (root / RUNS_INDEX_FILE).read_bytes()
    target = RunId(run_ids[5])  # r % 5 == 0: unfinished
    other = FsStore(root, create=False)  # another writer: this process's caches know nothing of it
    head = await other.events.head_seq(target)
    ts = fx.fixture_clock().now_millis()
    await other.events.append(
        target,
        head,
        [
            EventEnvelope(run_id=target, seq=head + 1, ts_millis=ts, event=DomainEvent(name="note", payload=1)),
            EventEnvelope(
                run_id=target,
                seq=head + 2,
                ts_millis=ts,
                event=RunCompleted(status=RunStatus.CANCELLED, final_snapshot_id=None),
            ),
        ],
    )
    other.close()
    assert (root / RUNS_INDEX_FILE).read_bytes() == index  # appends never touch the index
    rows = await _rows(root)
    assert rows[target][0] is RunDisplayStatus.CANCELLED and rows[target][5] == head + 2
    assert rows == await _rows_without_index(root)
    found = FsStore(root, create=False).events.runs_index.summaries()
    assert found.from_index == 30  # the reader wrote it again, current


async def test_a_new_run_and_a_deleted_run_after_the_index_was_written(tmp_path: Path) -> None:
    root = tmp_path / "many"
    run_ids = await _make(root, 20)
    await _rows(root)
    shutil.rmtree(root / "runs" / run_ids[3])
    f = await fx.build_fixture_store(FsStore(root, create=False), only=[fx.RUN_COMPLETED])
    rows = await _rows(root, f)
    assert run_ids[3] not in rows and fx.RUN_COMPLETED in rows
    assert len(rows) == 20
    assert rows == await _rows_without_index(root, f)


async def test_a_run_log_edited_in_place_to_the_same_size_is_not_taken_from_the_index(tmp_path: Path) -> None:
    root = tmp_path / "many"
    run_ids = await _make(root, 10)
    await _rows(root)
    log = root / "runs" / run_ids[1] / "events.jsonl"
    data = log.read_bytes()
    log.write_bytes(data.replace(b'"Completed"', b'"Cancelled"'))  # same size, another mtime
    store = FsStore(root, create=False)
    found = store.events.runs_index.summaries()
    assert found.from_index == 9
    assert found.summaries[RunId(run_ids[1])].status is RunStatus.CANCELLED


# ---------------------------------------------------------------------------------------------- writing it


async def test_a_failed_write_of_the_index_leaves_the_old_one_whole_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "many"
    run_ids = await _make(root, 10)
    await _rows(root)
    old = (root / RUNS_INDEX_FILE).read_bytes()
    shutil.rmtree(root / "runs" / run_ids[0])  # stale: the next reader rewrites it
    store = FsStore(root, create=False)
    ops = store.events._core.ops

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError(5, "I/O error (the process died here)")

    monkeypatch.setattr(ops, "rename", crash)
    found = store.events.runs_index.summaries()
    assert len(found.run_ids) == 9 and not found.written
    assert (root / RUNS_INDEX_FILE).read_bytes() == old
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    monkeypatch.undo()
    assert len(await _rows(root)) == 9  # the old index's entry of the deleted run is ignored


async def test_a_read_only_store_is_read_through_its_index_and_never_written(tmp_path: Path) -> None:
    root = tmp_path / "many"
    await _make(root, 12)
    script = tmp_path / "load.py"
    script.write_text(
        "import asyncio, json, sys\n"
        "from engine.stores.fs import FsStore\n"
        "store = FsStore(sys.argv[1], create=False)\n"
        "found = store.events.runs_index.summaries()\n"
        "print(json.dumps([len(found.run_ids), found.from_index, found.written,"
        " sorted(str(s.status) for s in found.summaries.values())]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(script), str(root)]
    if os.geteuid() == 0:  # root writes anywhere: drop the capabilities that let it (what a plain user lacks)
        drop = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", "--", *cmd]
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        runs = [json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)]
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    assert runs[0][:3] == [12, 0, False]
    assert not (root / RUNS_INDEX_FILE).exists()
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    # with an index written by its owner, the read-only reader takes every run from it
    FsStore(root, create=False).events.runs_index.summaries()
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        again = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    assert again == [12, 12, False, runs[0][3]]


# ---------------------------------------------------------------------------------------------- light rows


async def test_a_summary_from_the_index_keeps_its_states_undecoded_until_a_row_needs_them(tmp_path: Path) -> None:
    root, _ = await _fixture(tmp_path)
    found = FsStore(root, create=False).events.runs_index.summaries()
    summary = found.summaries[fx.RUN_COMPLETED]
    assert isinstance(summary.states, LazyStates)
    head, states = index_form(summary)
    assert states is summary.states.text  # written back as it was read
    assert summary.states._decoded is None
    model = RunModel(summary.run_id)
    model.seed(summary)
    assert model.status is RunDisplayStatus.COMPLETED  # finished: sorted and counted without the states
    assert summary.states._decoded is None
    assert model.done == model.total == len(summary.states) > 0  # drawn: made then
    assert summary.states._decoded is not None
    assert from_index_form(summary.run_id, head, states) == summary
    for run_id, status in ((fx.RUN_RUNNING, RunDisplayStatus.RUNNING), (fx.RUN_RETRYING, RunDisplayStatus.RETRYING)):
        summary = found.summaries[run_id]
        model = RunModel(run_id)
        model.seed(summary)
        assert model.status is status
        # a run none of whose attempts failed is running without making its states; a failed attempt may retry
        assert isinstance(summary.states, LazyStates)
        assert (summary.states._decoded is None) == (summary.last_error is None) == (run_id == fx.RUN_RUNNING)


# ---------------------------------------------------------------------------------------------- mfm runs


def _mfm_runs_json(root: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    import mfm_tui.cli

    with pytest.raises(SystemExit) as done:
        mfm_tui.cli.main(["--store", str(root), "--ops", "engine.demo_ops", "runs", "--json"])
    assert done.value.code in (0, None)
    out: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    for run in out:
        del run["duration_millis"]  # of the running runs: up to now
    return out


def test_mfm_runs_reads_the_index_not_every_event_and_lists_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "many"
    asyncio.run(_make(root, 60))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    without = _mfm_runs_json(root, capsys)  # writes the index (the code before read every event of every run)
    _index_written()
    assert (root / RUNS_INDEX_FILE).exists()
    opens = Opens(monkeypatch)
    listed = _mfm_runs_json(root, capsys)
    assert opens.count(RUNS_INDEX_FILE) == 1
    assert opens.count(SUMMARY_FILE) == 0
    assert opens.count("events.jsonl") == 0
    assert listed == without and len(listed) == 60


def test_mfm_runs_reads_a_manifest_its_runs_share_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """60 runs of one operation and parameters share one manifest: read once per `mfm runs`, not once per run
    (10,000 runs: 3.2 s of the listing's 9 s)."""
    root = tmp_path / "many"
    asyncio.run(_make(root, 60))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _mfm_runs_json(root, capsys)
    _index_written()
    opens = Opens(monkeypatch)
    assert len(_mfm_runs_json(root, capsys)) == 60
    artifacts = [n for n in opens.names if len(n) == 64 and all(c in "0123456789abcdef" for c in n)]
    assert len(artifacts) == 1, artifacts  # the shared manifest (the code before: 60)


async def test_a_damaged_run_log_stays_a_damaged_row_when_its_summary_comes_from_the_index(tmp_path: Path) -> None:
    root, f = await _fixture(tmp_path)
    log = root / "runs" / fx.RUN_COMPLETED / "events.jsonl"
    data = bytearray(log.read_bytes())
    at = data.index(b"StateCompleted")
    data[at] ^= 0x20  # a flipped byte in a record in the middle: damage, not a torn tail
    log.write_bytes(bytes(data))
    first = await _rows(root, f)  # summarized from the log (stale entry), then written to the index
    assert first[fx.RUN_COMPLETED][-1] is not None and first[fx.RUN_COMPLETED][-1][0] == "run_log_corrupt"
    found = FsStore(root, create=False).events.runs_index.summaries()
    assert found.from_index == 9 and found.summaries[fx.RUN_COMPLETED].anomalies
    assert await _rows(root, f) == first  # from the index: still damaged (a summary with anomalies is read)


async def test_summaries_written_before_they_kept_the_log_mtime_go_into_the_index_once(tmp_path: Path) -> None:
    root = tmp_path / "many"
    await _make(root, 12)
    for path in (root / "runs").glob(f"*/{SUMMARY_FILE}"):  # as an older version wrote them: no "mtime"
        body = json.loads(path.read_bytes())
        del body["mtime"]
        path.write_text(json.dumps(body))
    await _rows(root)  # each summary.json is current (same size): used, and the index written with them
    found = FsStore(root, create=False).events.runs_index.summaries()
    assert found.from_index == 12 and not found.stale  # not read again at every open
