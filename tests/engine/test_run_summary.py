"""engine.run_summary: the incremental fold and its wire form (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.events import DomainEvent, EventEnvelope, RunCompleted, RunStatus
from engine.ids import RunId
from engine.run_summary import RunSummary, apply, summarize
from engine.stores.fs import FsStore, framing
from tests.tui.fixtures import _runs


@pytest.mark.parametrize("builder", _runs(), ids=lambda b: b.run_id[:8])
def test_folding_in_pieces_equals_folding_at_once_and_the_wire_form_round_trips(builder: object) -> None:
    envelopes: list[EventEnvelope] = builder.envelopes  # type: ignore[attr-defined]
    run_id = envelopes[0].run_id
    whole = summarize(run_id, envelopes)
    pieces = RunSummary(run_id)
    for i in range(0, len(envelopes), 3):
        pieces = apply(pieces, envelopes[i : i + 3])
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
