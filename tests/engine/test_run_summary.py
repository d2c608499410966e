"""engine.run_summary: the incremental fold and its wire form (issue 15), child runs included (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import engine.stores.fs._summary as fs_summary
from engine._kinds import ArtifactKind
from engine.events import (
    DOMAIN_EVENT_CHILD_RUN_COMPLETED,
    DOMAIN_EVENT_CHILD_RUN_SPAWNED,
    DomainEvent,
    EventEnvelope,
    RunCompleted,
    RunStatus,
    StateEntered,
)
from engine.ids import RunId, StateId
from engine.run_summary import ChildRunSummary, RunSummary, apply, summarize
from engine.stores import Blob
from engine.stores.fs import FsStore, framing
from tests.tui.fixtures import _runs
from tests.tui.tree_fixtures import PARENT_FAILED, PARENT_RUNNING, _builders, build_tree_store, children


@pytest.mark.parametrize("builder", [*_runs(), *_builders()], ids=lambda b: b.run_id[:8])
def test_folding_in_pieces_equals_folding_at_once_and_the_wire_form_round_trips(builder: object) -> None:
    envelopes: list[EventEnvelope] = builder.envelopes  # type: ignore[attr-defined]
    run_id = envelopes[0].run_id
    whole = summarize(run_id, envelopes)
    for step in (1, 3):
        pieces = RunSummary(run_id)
        for i in range(0, len(envelopes), step):
            pieces = apply(pieces, envelopes[i : i + step])
        assert pieces == whole
    assert apply(whole, envelopes) is whole  # nothing past its head: unchanged
    assert whole.head == len(envelopes)
    wire = json.loads(json.dumps(whole.to_wire()))
    assert RunSummary.from_wire(wire) == whole


def test_a_malformed_or_foreign_version_summary_is_a_value_error() -> None:
    run_id = RunId("00000000-0000-4000-8000-0000000000aa")
    wire = summarize(run_id, [EventEnvelope(run_id=run_id, seq=1, event=DomainEvent(name="x", payload=1))]).to_wire()
    for bad in ({**wire, "version": 99}, {**wire, "head": "7"}, {**wire, "states": [["a.b.c"]]}, {}, []):
        with pytest.raises(ValueError):
            RunSummary.from_wire(bad)


async def test_a_replaced_log_is_not_summarized_from_the_old_cache(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "s")
    run_id = RunId("00000000-0000-4000-8000-0000000000ab")
    envs = [EventEnvelope(run_id=run_id, seq=i, event=DomainEvent(name="x", payload=i)) for i in (1, 2, 3)]
    await store.events.append(run_id, 0, envs)
    assert (await FsStore(tmp_path / "s").events.run_summary(run_id)).head == 3  # type: ignore[union-attr]
    log = tmp_path / "s" / "runs" / run_id / "events.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    replaced = tmp_path / "replacement"
    bodies = [framing.record_body(line.rstrip(b"\n")) for line in lines[:2]]
    replaced.write_bytes(framing.frame_commit(bodies, [])[0])  # same first bytes, another file, shorter
    replaced.replace(log)
    done = EventEnvelope(run_id=run_id, seq=3, event=RunCompleted(status=RunStatus.COMPLETED))
    fresh = FsStore(tmp_path / "s")
    await fresh.events.append(run_id, 2, [done])
    summary = await FsStore(tmp_path / "s").events.run_summary(run_id)
    assert summary is not None and (summary.head, summary.status) == (3, RunStatus.COMPLETED)


async def test_another_process_appending_to_a_run_keeps_its_summary_file_current(tmp_path: Path) -> None:
    run_id = RunId("00000000-0000-4000-8000-0000000000ac")
    envs = [EventEnvelope(run_id=run_id, seq=i, event=DomainEvent(name="x", payload=i)) for i in (1, 2, 3)]
    await FsStore(tmp_path / "s").events.append(run_id, 0, envs)
    resumed = FsStore(tmp_path / "s")  # a worker resuming the run: nothing of it in memory
    await resumed.events.append(
        run_id, 3, [EventEnvelope(run_id=run_id, seq=4, event=DomainEvent(name="y", payload=4))]
    )
    done = EventEnvelope(run_id=run_id, seq=5, event=RunCompleted(status=RunStatus.COMPLETED))
    await resumed.events.append(run_id, 4, [done])
    raw = json.loads((tmp_path / "s" / "runs" / run_id / "summary.json").read_bytes())
    assert (raw["summary"]["head"], raw["summary"]["status"]) == (5, "Completed")


def _tree_summary(run_id: RunId) -> RunSummary:
    builder = next(b for b in _builders() if b.run_id == run_id)
    return summarize(run_id, builder.envelopes)


def test_a_parent_summary_holds_its_children_in_spawn_order_with_the_spawning_state_and_joined_status() -> None:
    failed = _tree_summary(PARENT_FAILED)
    state = StateId("demo.main.run_children")
    kids = children(PARENT_FAILED, 3)
    assert list(failed.children) == kids
    assert [(c.state_id, c.status) for c in failed.children.values()] == [
        (state, "Completed"),
        (state, "Failed"),
        (state, "Completed"),
    ]
    seqs = [c.spawned_seq for c in failed.children.values()]
    assert seqs == sorted(seqs) and seqs[0] > 1
    running = _tree_summary(PARENT_RUNNING)
    assert [c.status for c in running.children.values()] == ["Completed", None]  # the second not joined yet
    wire = json.loads(json.dumps(running.to_wire()))
    assert RunSummary.from_wire(wire).children == running.children
    second = children(PARENT_RUNNING, 2)[1]
    assert wire["children"][1] == [second, state, running.children[second].spawned_seq, None]


def test_a_child_spawned_while_several_or_no_attempts_are_open_names_no_state_and_a_bad_payload_is_an_anomaly() -> None:
    run_id = RunId("00000000-0000-4000-8000-0000000000ad")
    kid = [RunId(f"00000000-0000-4000-8000-0000000001a{i}") for i in range(3)]

    def spawned(child: str) -> DomainEvent:
        return DomainEvent(name=DOMAIN_EVENT_CHILD_RUN_SPAWNED, payload={"child_run_id": child})

    a, b = StateId("demo.main.a"), StateId("demo.main.b")
    events = [
        spawned(kid[0]),  # no attempt open
        StateEntered(state_id=a, attempt=0, base_snapshot_id="a" * 64),
        spawned(kid[1]),  # a alone
        StateEntered(state_id=b, attempt=0, base_snapshot_id="a" * 64),
        spawned(kid[2]),  # a and b: whose is it?
        spawned(kid[1]),  # announced again: the first stays
        DomainEvent(name=DOMAIN_EVENT_CHILD_RUN_SPAWNED, payload={"child_run_id": "not-a-uuid"}),
        DomainEvent(name=DOMAIN_EVENT_CHILD_RUN_COMPLETED, payload=[1]),
        DomainEvent(name=DOMAIN_EVENT_CHILD_RUN_COMPLETED, payload={"child_run_id": kid[2], "status": "Failed"}),
    ]
    envs = [EventEnvelope(run_id=run_id, seq=i, event=e) for i, e in enumerate(events, 1)]
    summary = summarize(run_id, envs)
    assert list(summary.children.values()) == [
        ChildRunSummary(kid[0], None, 1),
        ChildRunSummary(kid[1], a, 3),
        ChildRunSummary(kid[2], None, 5, "Failed"),
    ]
    assert summary.anomalies == 2
    assert RunSummary.from_wire(json.loads(json.dumps(summary.to_wire()))) == summary


async def test_a_summary_cached_by_the_version_before_child_runs_is_rebuilt_with_the_children(tmp_path: Path) -> None:
    await build_tree_store(FsStore(tmp_path / "s"))
    cache = tmp_path / "s" / "runs" / PARENT_FAILED / "summary.json"
    raw = json.loads(cache.read_bytes())
    del raw["summary"]["children"]
    raw["summary"]["version"] = 1  # what the code before child runs wrote: no children
    cache.write_text(json.dumps(raw))
    store = FsStore(tmp_path / "s")
    summary = await store.events.run_summary(PARENT_FAILED)
    assert summary is not None and list(summary.children) == children(PARENT_FAILED, 3)
    assert store.events.summaries.rebuilds == 1


async def test_commits_with_blobs_keep_the_summary_current_without_reading_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format v2: a commit's blob records precede its events, so the new events do not start where the summary
    ended. The appender must still fold them in from memory: re-reading the cache and the log after every commit
    made a durable state cost O(states) (2.3 ms of CPU per state at 200 states, bench/engine_overhead.py)."""
    store = FsStore(tmp_path / "s")
    run_id = RunId("00000000-0000-4000-8000-0000000000ad")
    reads: list[RunId] = []
    real = store.events.summaries.summary
    monkeypatch.setattr(store.events.summaries, "summary", lambda r, *a: reads.append(r) or real(r, *a))
    for seq in range(1, 6):
        blob = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"n":%d}' % seq)
        env = EventEnvelope(run_id=run_id, seq=seq, event=DomainEvent(name="x", payload=seq))
        assert await store.events.commit(run_id, seq - 1, [env], [blob]) == seq
    done = EventEnvelope(run_id=run_id, seq=6, event=RunCompleted(status=RunStatus.COMPLETED))
    await store.events.commit(run_id, 5, [done], [])
    assert reads == []  # never caught up from the file
    raw = json.loads((tmp_path / "s" / "runs" / run_id / "summary.json").read_bytes())
    assert (raw["summary"]["head"], raw["summary"]["status"]) == (6, "Completed")


async def test_a_store_copied_with_its_times_keeps_its_summaries(tmp_path: Path) -> None:
    """A store copied or restored with its file times (cp -a, rsync -a, a backup) has new inodes: its summaries still
    hold (same size, same mtime), so opening it folds no log again; a copy whose log was edited since still is."""
    import os
    import shutil

    run_id = RunId("00000000-0000-4000-8000-0000000000ad")
    envs = [EventEnvelope(run_id=run_id, seq=i, event=DomainEvent(name="x", payload=i)) for i in (1, 2, 3)]
    await FsStore(tmp_path / "s").events.append(run_id, 0, envs)
    first = FsStore(tmp_path / "s").events
    assert (await first.run_summary(run_id)).head == 3  # type: ignore[union-attr]
    shutil.copytree(tmp_path / "s", tmp_path / "copy")  # copy2: times kept, inodes new
    copied = FsStore(tmp_path / "copy").events
    summary = await copied.run_summary(run_id)
    assert summary is not None and summary.head == 3
    assert copied.summaries.rebuilds == 0
    log = tmp_path / "copy" / "runs" / run_id / "events.jsonl"
    st = log.stat()
    os.utime(log, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched since: the summary no longer holds
    again = FsStore(tmp_path / "copy").events
    assert (await again.run_summary(run_id)).head == 3  # type: ignore[union-attr]
    assert again.summaries.rebuilds == 1


@pytest.mark.parametrize("encoder", ["orjson", "json fallback"])
async def test_the_summary_file_an_appender_writes_reads_back_as_the_fold_of_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoder: str
) -> None:
    """The appender writes the summary file with orjson (json when orjson refuses a value): either way a fresh
    store reads it back, without folding the log, as the summary of the whole stream."""
    if encoder != "orjson":

        def refuse(value: object) -> bytes:
            raise TypeError("refused")

        monkeypatch.setattr(fs_summary.orjson, "dumps", refuse)
    store = FsStore(tmp_path / "s")
    run_id = RunId("00000000-0000-4000-8000-0000000000ae")
    envs = [
        EventEnvelope(run_id=run_id, seq=1, event=DomainEvent(name="x", payload={"text": "é ✓"})),
        EventEnvelope(run_id=run_id, seq=2, event=RunCompleted(status=RunStatus.COMPLETED)),
    ]
    for env in envs:
        await store.events.append(run_id, env.seq - 1, [env])
    raw = json.loads((tmp_path / "s" / "runs" / run_id / "summary.json").read_bytes())
    assert raw["summary"]["head"] == 2
    reader = FsStore(tmp_path / "s")
    assert await reader.events.run_summary(run_id) == summarize(run_id, envs)
    assert reader.events.summaries.rebuilds == 0
