"""The event log's pure core (offset index, tail-first reads, raw-byte search and filter) and its widget."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from engine.errors import StateError
from engine.events import (
    DomainEvent,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
    encode_envelope,
)
from engine.stores.fs.framing import newline_offsets
from mfm_tui.log_index import FileLogSource, ListLogSource, LogFilter, summarize

RUN = str(uuid.UUID(int=7))
A = "a" * 64
B = "b" * 64


def _envelopes(n_states: int) -> list[EventEnvelope]:
    evs: list[object] = [RunStarted(op_id="demo", manifest_id=A, initial_snapshot_id=B)]
    for i in range(n_states):
        sid = f"demo.main.step_{i:04d}"
        evs.append(StateEntered(state_id=sid, attempt=0, base_snapshot_id=B))
        if i % 3 == 2:
            evs.append(StateFailed(state_id=sid, error=StateError.new("http_503", "upstream down", retryable=True)))
            evs.append(StateEntered(state_id=sid, attempt=1, base_snapshot_id=B))
        evs.append(StateCompleted(state_id=sid, context_snapshot_id=A))
    evs.append(RunCompleted(status=RunStatus.COMPLETED, final_snapshot_id=A))
    return [EventEnvelope(run_id=RUN, seq=k + 1, ts_millis=1_000 + k, event=ev) for k, ev in enumerate(evs)]


def _write(path: Path, envs: list[EventEnvelope], *, torn: bytes = b"") -> None:
    path.write_bytes(b"".join(encode_envelope(e) + b"\n" for e in envs) + torn)


def test_newline_offsets_are_absolute() -> None:
    assert list(newline_offsets(b"ab\ncd\n\nx", 1)) == [2, 5, 6]
    assert list(newline_offsets(b"ab\ncd\n", 3, 5)) == []


def test_summaries_of_each_kind() -> None:
    envs = _envelopes(3)
    lines = [summarize(encode_envelope(e)) for e in envs]
    assert [ln.kind for ln in lines[:3]] == ["RunStarted", "StateEntered", "StateCompleted"]
    assert lines[0].summary.startswith("op demo")
    failed = next(ln for ln in lines if ln.kind == "StateFailed")
    assert failed.state == "demo.main.step_0002"
    assert failed.summary == "[http_503] retryable  upstream down"
    assert lines[-1].summary.startswith("Completed")
    dom = EventEnvelope(
        run_id=RUN,
        seq=9,
        event=DomainEvent(
            name="retry_scheduled",
            payload={
                "state_id": "demo.main.x",
                "failed_attempt": 0,
                "next_attempt": 1,
                "delay_ms": 4000,
                "not_before_millis": 5,
            },
        ),
    )
    line = summarize(encode_envelope(dom))
    assert (line.kind, line.state, line.summary) == ("retry_scheduled", "demo.main.x", "attempt 2 in 4.0s")
    assert summarize(b"{not json").kind == "corrupt"


def test_filter_parse_and_needles() -> None:
    flt = LogFilter.parse("kind=StateFailed s=step_0002 upstream down")
    assert (flt.kind, flt.state, flt.text) == ("StateFailed", "step_0002", "upstream down")
    assert flt.active and "kind=StateFailed" in flt.describe()
    assert not LogFilter.parse("  ").active


def test_file_source_shows_tail_before_indexing(tmp_path: Path) -> None:
    envs = _envelopes(2000)  # ~6,000 lines, far more than 64 KiB
    path = tmp_path / "events.jsonl"
    _write(path, envs)
    src = FileLogSource(path)
    assert len(src) == len(envs)
    assert not src.indexed
    assert src.raw(len(envs) - 1) == encode_envelope(envs[-1])
    assert src.raw(0) is None  # not indexed yet
    src.build_index()
    assert src.indexed and len(src) == len(envs)
    assert src.raw(0) == encode_envelope(envs[0])
    assert src.raw(1234) == encode_envelope(envs[1234])


def test_file_source_ignores_a_torn_tail_until_it_completes(tmp_path: Path) -> None:
    envs = _envelopes(3)
    path = tmp_path / "events.jsonl"
    full = encode_envelope(envs[-1])
    _write(path, envs[:-1], torn=full[:20])
    src = FileLogSource(path)
    assert len(src) == len(envs) - 1
    assert src.refresh() == 0
    with open(path, "ab") as fh:
        fh.write(full[20:] + b"\n")
    assert src.refresh() == 1
    assert src.raw(len(envs) - 1) == full


def test_refresh_during_indexing_keeps_appended_lines(tmp_path: Path) -> None:
    envs = _envelopes(2000)
    path = tmp_path / "events.jsonl"
    _write(path, envs[:-5])
    src = FileLogSource(path)
    with open(path, "ab") as fh:
        fh.write(b"".join(encode_envelope(e) + b"\n" for e in envs[-5:]))
    assert src.refresh() == 5
    src.build_index()
    assert len(src) == len(envs)
    assert src.raw(len(envs) - 1) == encode_envelope(envs[-1])


def test_only_committed_batches_are_shown(tmp_path: Path) -> None:
    """FsStore framing: continuation lines end with " \\n"; a batch counts once its last line is complete."""
    envs = _envelopes(3)
    lines = [encode_envelope(e) for e in envs]
    path = tmp_path / "events.jsonl"
    committed_part = lines[0] + b"\n" + lines[1] + b" \n" + lines[2] + b"\n"
    open_batch = lines[3] + b" \n" + lines[4] + b" \n"  # a batch still being written
    path.write_bytes(committed_part + open_batch)
    src = FileLogSource(path)
    assert len(src) == 3
    assert src.raw(1) == lines[1] + b" "
    src.build_index()
    assert len(src) == 3
    with open(path, "ab") as fh:
        fh.write(lines[5] + b"\n")  # the batch's final line lands
    assert src.refresh() == 3
    assert src.raw(5) == lines[5]
    assert summarize(src.raw(3) or b"").seq == 4


def test_empty_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"")
    src = FileLogSource(path)
    assert len(src) == 0 and src.indexed
    assert src.find(b"x", 0) == -1
    assert list(src.filter(LogFilter(text="x"))) == []


@pytest.mark.parametrize("kind", ["file", "list"])
def test_find_and_filter_agree_across_sources(tmp_path: Path, kind: str) -> None:
    envs = _envelopes(300)
    if kind == "file":
        path = tmp_path / "events.jsonl"
        _write(path, envs)
        src: FileLogSource | ListLogSource = FileLogSource(path)
        src.build_index()
    else:
        src = ListLogSource(envs)
    expected_failed = [i for i, e in enumerate(envs) if isinstance(e.event, StateFailed)]
    assert list(src.filter(LogFilter(kind="StateFailed"))) == expected_failed
    step5 = list(src.filter(LogFilter(state="demo.main.step_0005")))
    assert step5 and all("step_0005" in (src.raw(i) or b"").decode() for i in step5)
    both = list(src.filter(LogFilter(kind="StateFailed", text="step_0005")))
    assert both == [i for i in expected_failed if i in step5]
    # find forward / backward, with and without a filtered subset
    first = src.find(b"http_503", 0)
    assert first == expected_failed[0]
    assert src.find(b"http_503", first + 1) == expected_failed[1]
    assert src.find(b"http_503", len(envs) - 1, backwards=True) == expected_failed[-1]
    assert src.find(b"http_503", first - 1, backwards=True) == -1
    among = src.filter(LogFilter(kind="StateEntered"))
    hit = src.find(b"step_0002", 0, among=among)
    assert hit in among and "StateEntered" in (src.raw(hit) or b"").decode()
    assert src.find(b"no such text", 0) == -1


def test_list_source_extend_ignores_known_seqs() -> None:
    envs = _envelopes(2)
    src = ListLogSource(envs[:3])
    assert src.extend(envs[1:]) == len(envs) - 3
    assert len(src) == len(envs)
    assert src.raw(len(envs)) is None


def test_windowed_search_crosses_window_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mfm_tui.log_index as log_index

    monkeypatch.setattr(log_index, "_WINDOW", 64)  # far smaller than a line: every search spans many windows
    envs = _envelopes(40)
    path = tmp_path / "events.jsonl"
    _write(path, envs)
    src = FileLogSource(path)
    src.build_index()
    failed = [i for i, e in enumerate(envs) if isinstance(e.event, StateFailed)]
    assert list(src.lines_containing([b"http_503"])) == failed
    assert src.find(b"http_503", 0) == failed[0]
    assert src.find(b"http_503", len(envs) - 1, backwards=True) == failed[-1]
    assert src.find(b"http_503", failed[-1] + 1) == -1
    assert list(src.filter(LogFilter(kind="StateFailed"))) == failed


async def test_widget_filters_a_file_whose_index_is_not_built_yet(tmp_path: Path) -> None:
    from textual.app import App, ComposeResult

    from mfm_tui.widgets.event_log import EventLog

    envs = _envelopes(2000)
    path = tmp_path / "events.jsonl"
    _write(path, envs)
    src = FileLogSource(path)
    assert not src.indexed

    class Host(App[None]):
        def compose(self) -> ComposeResult:
            yield EventLog(src)

    async with Host().run_test(size=(100, 20)) as pilot:
        log = pilot.app.query_one(EventLog)
        assert log.follow and log.cursor == len(envs) - 1
        log.apply_filter(LogFilter(kind="StateFailed"))
        await pilot.pause()
        failed = [i for i, e in enumerate(envs) if isinstance(e.event, StateFailed)]
        assert [log.line_at(r) for r in range(log.row_count)] == failed
        assert log.cursor == len(failed) - 1
        log.apply_filter(LogFilter(), "http_503")
        log.cursor = 0
        assert log.find()
        assert log.cursor == failed[0]


async def test_fold_file_matches_a_full_fold(tmp_path: Path) -> None:
    from engine.stores import MemoryStore
    from mfm_tui.log_index import fold_file
    from mfm_tui.run_model import RunModel
    from tests.tui.fixtures import build_fixture_store

    fx = await build_fixture_store(MemoryStore())
    for run_id, builder in fx.builders.items():
        envs = builder.envelopes
        path = tmp_path / f"{run_id}.jsonl"
        _write(path, envs)
        src = FileLogSource(path)
        src.build_index()
        sparse = fold_file(src, run_id)
        full = RunModel(run_id)
        full.apply(envs)
        assert sparse.status == full.status, run_id
        assert sparse.last_seq == full.last_seq == len(envs)
        assert sparse.anomalies == full.anomalies == []
        assert {
            k: (v.status, v.attempt_number, v.not_before_millis, len(v.facts)) for k, v in sparse.states.items()
        } == {k: (v.status, v.attempt_number, v.not_before_millis, len(v.facts)) for k, v in full.states.items()}
        assert sparse.checkpoint_id == full.checkpoint_id


def test_fold_file_records_an_undecodable_line(tmp_path: Path) -> None:
    from mfm_tui.log_index import fold_file

    envs = _envelopes(2)
    path = tmp_path / "events.jsonl"
    lines = [encode_envelope(e) for e in envs]
    lines[2] = b'{"run_id":"x","event":{"Kernel":{"Broken":{}}}}'
    path.write_bytes(b"\n".join(lines) + b"\n")
    src = FileLogSource(path)
    src.build_index()
    model = fold_file(src, RUN)
    assert model.last_seq == len(envs)
    assert any("machine_event_decode_failed" in a for a in model.anomalies)


def _row_text(log: object, y: int) -> str:
    return "".join(seg.text for seg in log.render_line(y))  # type: ignore[attr-defined]


async def test_following_the_first_frame_after_set_source_or_an_append_shows_the_end(tmp_path: Path) -> None:
    """Issue 15: no frame of the log's top in between (the scroll to the end lands a refresh later)."""
    from textual.app import App, ComposeResult

    from mfm_tui.widgets.event_log import EventLog

    envs = _envelopes(2000)
    path = tmp_path / "events.jsonl"
    _write(path, envs[:-1])

    class Host(App[None]):
        def compose(self) -> ComposeResult:
            yield EventLog()

    async with Host().run_test(size=(100, 20)) as pilot:
        log = pilot.app.query_one(EventLog)
        await pilot.pause()
        height = log.scrollable_content_region.height
        assert height > 0
        src = FileLogSource(path)
        log.set_source(src)  # what the next frame draws, before any refresh has moved the scroll offset
        assert log.scroll_offset.y == 0
        last = len(envs) - 1
        assert _row_text(log, height - 1).split()[0] == str(last)
        assert _row_text(log, 0).split()[0] == str(last - height + 1)
        await pilot.pause()
        assert log.scroll_offset.y == log.top_row  # the offset caught up: the same rows
        with path.open("ab") as fh:
            fh.write(encode_envelope(envs[-1]) + b"\n")
        log.lines_appended(src.refresh())
        assert _row_text(log, height - 1).split()[0] == str(len(envs))
        await pilot.pause()
        log.action_cursor_top()  # not following: the scroll offset decides again
        await pilot.pause()
        assert _row_text(log, 0).split()[0] == "1"


@pytest.mark.parametrize("version", [1, 2])
async def test_the_tail_and_appended_lines_are_served_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    """Issue 15: the lines on screen while following cost no open/pread/close (each syscall waits for the GIL while
    the index thread runs); lines older than what is kept are still read from the file, byte for byte."""
    import mfm_tui.log_index as log_index
    from engine.stores.fs import FsStore
    from engine.stores.fs import framing as fs_framing

    store = FsStore(tmp_path / "store", new_version=version)
    envs = _envelopes(300)
    await store.events.append(RUN, 0, envs[:-3])
    path = store.events_path(RUN)
    monkeypatch.setattr(log_index, "_KEEP_BYTES", 16 * 1024)
    src = FileLogSource(path)
    opened: list[object] = []
    real_open = log_index.os.open

    def counting_open(*a: Any, **k: Any) -> int:
        if str(a[0]) == str(path):
            opened.append(a)
        return real_open(*a, **k)

    monkeypatch.setattr(log_index.os, "open", counting_open)
    wire = [fs_framing.encode_line(e) for e in envs]

    def lines(first: int, stop: int) -> list[bytes]:
        return [(src.raw(i) or b"").rstrip(b" ") for i in range(first, stop)]  # v1: " " ends a continuation line

    assert lines(len(src) - 20, len(src)) == wire[len(src) - 20 : len(src)]
    head = len(src)
    await store.events.append(RUN, head, envs[-3:-1])
    await store.events.append(RUN, head + 2, envs[-1:])
    assert src.refresh() == 3
    assert lines(len(envs) - 20, len(envs)) == wire[-20:]
    assert opened == []  # all from memory
    src.build_index()
    assert lines(0, len(envs)) == wire  # the older ones from the file
    assert opened


async def test_an_append_to_a_long_log_asks_for_no_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: a new ``virtual_size`` reflowed the whole screen and redrew every widget on each appended event;
    when the log is longer than its view before and after, only its scrollbar's range changes."""
    from textual.app import App, ComposeResult
    from textual.widget import Widget

    from mfm_tui.widgets.event_log import EventLog

    envs = _envelopes(300)
    path = tmp_path / "events.jsonl"
    _write(path, envs[:-2])
    src = FileLogSource(path)

    class Host(App[None]):
        def compose(self) -> ComposeResult:
            yield EventLog(src)

    layouts: list[str] = []
    refresh = Widget.refresh

    def spy(widget: Widget, *regions: Any, **kw: Any) -> Any:
        if kw.get("layout"):
            layouts.append(type(widget).__name__)
        return refresh(widget, *regions, **kw)

    async with Host().run_test(size=(100, 20)) as pilot:
        log = pilot.app.query_one(EventLog)
        await pilot.pause()
        monkeypatch.setattr(Widget, "refresh", spy)
        with path.open("ab") as fh:
            fh.write(b"".join(encode_envelope(e) + b"\n" for e in envs[-2:]))
        log.lines_appended(src.refresh())
        await pilot.pause()
        assert layouts == []
        assert log.virtual_size.height == len(envs)
        assert log.vertical_scrollbar.window_virtual_size == len(envs)
        assert log.scroll_offset.y == log.max_scroll_y == len(envs) - log.scrollable_content_region.height
        assert _row_text(log, log.scrollable_content_region.height - 1).split()[0] == str(len(envs))
