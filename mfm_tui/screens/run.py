"""One run, live: header, the plan's state graph, the selected state's details and the event log.

The event log reads the run's events file directly when the store has one (``FsStore.events_path``): the tail is on
screen before anything else is read, the offset index and the run model's fold are built in background threads, and
appended lines are picked up by a cheap ``stat`` every 100 ms. Stores without files (memory, PostgreSQL) are read
through ``read_range`` from the last seq. Everything the screen needs from the app is read from attributes named like
``make_app``'s parameters (``store``, ``clock``, ``plan_resolver``, ``lease_probe``) and can also be passed in.

Layout: at 120x40 the graph and the state panel sit side by side over the log; below 100 columns the graph and the
log stack and the panel replaces the graph on ``enter`` (``esc`` brings the graph back).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from rich.syntax import Syntax
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Key, Resize
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Input, Static

from engine._artifacts import read_canonical_json
from engine.config import RunManifest
from engine.errors import MfmError
from engine.events import DomainEvent, EventEnvelope, decode_envelope
from engine.ids import ArtifactId, RunId
from mfm_tui import commands
from mfm_tui.clipboard import copy_text
from mfm_tui.clock import Clock, SystemClock
from mfm_tui.log_index import (
    FOLD_NEEDLES as _FOLD_NEEDLES,
)
from mfm_tui.log_index import (
    FileLogSource,
    ListLogSource,
    LogFilter,
    LogSource,
    fold_file,
    parse_query,
    summarize,
)
from mfm_tui.messages import StoreChanged
from mfm_tui.run_model import LeaseStatus, PlanShape, RunModel, StateStatus
from mfm_tui.screens.artifact import ArtifactEntry, ArtifactScreen
from mfm_tui.screens.confirm import SeqPrompt
from mfm_tui.widgets.event_log import EventLog
from mfm_tui.widgets.run_header import RunHeader
from mfm_tui.widgets.state_graph import StateGraph
from mfm_tui.widgets.state_panel import StatePanel

__all__ = ["EventDialog", "RunScreen", "events_path_of"]

POLL_SECONDS = 0.1
_ADOPT_GAP = 5000
"""Use the app watcher's model of the run when it is at most this many events behind the file."""
NARROW = 100


def events_path_of(store: Any, run_id: str) -> Path | None:
    """The run's JSONL event file if the store keeps one (``events_path`` on the store or its ``.events``)."""
    for owner in (store, getattr(store, "events", None)):
        fn = getattr(owner, "events_path", None)
        if callable(fn):
            try:
                path = Path(fn(run_id))
            except Exception:
                return None
            return path if path.is_file() else None
    return None


class EventDialog(ModalScreen[None]):
    """One event's full envelope as pretty JSON; ``y`` copies it, ``esc`` closes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,q", "dismiss", "Close"),
        Binding("y", "copy", "Copy JSON"),
    ]

    def __init__(self, seq: int, raw: bytes) -> None:
        super().__init__()
        self.seq = seq
        try:
            self.text = json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
        except ValueError:
            self.text = raw.decode("utf-8", "replace")

    def compose(self) -> ComposeResult:
        with Vertical(id="event-box") as box:
            box.border_title = f"Event seq {self.seq}"
            with VerticalScroll():
                yield Static(Syntax(self.text, "json", theme="ansi_dark", word_wrap=True, background_color="default"))
            yield Static("y copy JSON   esc close", id="event-hint")

    def action_copy(self) -> None:
        copy_text(self.app, self.text, f"event {self.seq}")


class RunScreen(Screen[None]):
    """``RunScreen(run_id=...)``: the live view of one run."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", tooltip="Close the panel / clear the filter / back to the runs"),
        Binding("f", "toggle_follow", "Follow", tooltip="Follow new events on/off (scrolling up pauses it)"),
        Binding("slash", "filter", "Filter", tooltip="Filter the log: kind=… state=… text=…; bare words find"),
        Binding("n", "find_next", "Find next", tooltip="Next log line with the find text"),
        Binding("N", "find_previous", "Find prev", show=False, tooltip="Previous log line with the find text"),
        Binding("a", "artifacts", "Artifacts", tooltip="Manifest, snapshots, facts and outputs of the state/run"),
        Binding("tab", "switch_focus", "Graph/log", show=False, tooltip="Move between the state graph and the log"),
        Binding("j", "log('cursor_down')", "Down", show=False, tooltip="Log: next event"),
        Binding("k", "log('cursor_up')", "Up", show=False, tooltip="Log: previous event (pauses follow)"),
        Binding("g", "log('cursor_top')", "Top", show=False, tooltip="Log: first event"),
        Binding("G", "log('cursor_bottom')", "Bottom", show=False, tooltip="Log: last event, follow again"),
        Binding("y", "copy_id", "Copy id", show=False, tooltip="Copy the run id (OSC 52)"),
        Binding("c", "cancel_run", "Cancel", tooltip="Cancel this run (confirmation first)"),
        Binding("r", "resume_run", "Resume", tooltip="Resume this run; a failed run gets a recovery run"),
        Binding("p", "replay_run", "Replay", tooltip="Replay this finished run and compare (deterministic?)"),
        Binding("d", "diff_state", "Diff", tooltip="Diff the selected state's result against its base"),
        Binding("left_square_bracket", "history(-1)", "Back in time", tooltip="Time travel: one event back"),
        Binding("right_square_bracket", "history(1)", "Forward", show=False, tooltip="Time travel: one event on"),
        Binding("t", "jump_seq", "Jump to seq", show=False, tooltip="Time travel: show the run as of a seq"),
    ]
    CONTROLS: ClassVar[frozenset[str]] = frozenset({"cancel_run", "resume_run", "replay_run"})

    def __init__(
        self,
        run_id: str,
        *,
        store: Any = None,
        clock: Clock | None = None,
        plan_resolver: Callable[[RunManifest], PlanShape | None] | None = None,
        lease_probe: Callable[[RunId], LeaseStatus] | None = None,
        ascii_only: bool | None = None,
        poll: bool | None = None,
    ) -> None:
        super().__init__()
        self.run_id = RunId(run_id)
        self._store = store
        self._clock = clock
        self._plan_resolver = plan_resolver
        self._lease_probe = lease_probe
        self._ascii = ascii_only
        self._poll_enabled = poll
        self.model = RunModel(self.run_id)
        self.source: LogSource = ListLogSource()
        self.selected: str | None = None
        self.load_error: tuple[str, str] | None = None
        self._model_ready = False
        self._polling = False
        self._ticks = 0
        self.as_of: int | None = None
        """Time travel: the seq the screen shows the run as of (``None``: live)."""
        self._past: RunModel | None = None
        self._past_millis: int | None = None
        self._history: tuple[int, list[EventEnvelope]] | None = None
        """Time travel's decoded kernel/fact/retry envelopes of the events file, and how many lines they cover."""

    # ------------------------------------------------------------------ app services

    def _app_attr(self, name: str) -> Any:
        return getattr(self.app, name, None)

    @property
    def store(self) -> Any:
        return self._store if self._store is not None else self._app_attr("store")

    @property
    def clock(self) -> Clock:
        clock = self._clock or self._app_attr("clock")
        return clock if clock is not None else SystemClock()

    @property
    def ascii_only(self) -> bool:
        if self._ascii is not None:
            return self._ascii
        flag = self._app_attr("ascii_only")
        if isinstance(flag, bool):
            return flag
        theme = str(getattr(self.app, "theme", "") or "")
        return "ascii" in theme or "mono" in theme

    # ------------------------------------------------------------------ compose

    def compose(self) -> ComposeResult:
        yield RunHeader(ascii_only=self.ascii_only, id="run-header")
        yield Static("", id="time-banner")
        with Horizontal(id="run-top"):
            with Vertical(id="graph-box"):
                yield StateGraph(id="graph")
            with VerticalScroll(id="panel-box"):
                yield StatePanel(ascii_only=self.ascii_only, id="state-panel")
        with Vertical(id="log-box"):
            yield EventLog(id="log")
        yield Input(placeholder="kind=StateFailed state=item_2 text=503   (bare words: find)", id="log-filter")
        yield Footer()

    DEFAULT_CSS = """
    RunScreen > #time-banner { display: none; height: 1; background: $warning; color: $background; text-style: bold; }
    RunScreen.-time-travel > #time-banner { display: block; }
    App.-theme-mfm-ascii RunScreen > #time-banner { background: $foreground; color: $background; }
    """

    def on_mount(self) -> None:
        graph = self.query_one(StateGraph)
        graph.ascii_only = self.ascii_only
        self.query_one(EventLog).ascii_only = self.ascii_only
        self.query_one("#graph-box").border_title = "States"
        self.query_one("#panel-box").border_title = "State"
        self._set_log_title()
        self._apply_width(self.app.size.width)
        self.query_one(EventLog).focus()
        self._render_header()
        self._open()
        self.set_interval(1.0, self.tick)
        poll = self._poll_enabled if self._poll_enabled is not None else self._app_attr("watch_store") is not False
        if poll:
            self.set_interval(POLL_SECONDS, self._timed_poll)

    def on_resize(self, event: Resize) -> None:
        self._apply_width(event.size.width)

    def _apply_width(self, width: int) -> None:
        self.set_class(width < NARROW, "-narrow")

    # ------------------------------------------------------------------ loading

    def _open(self) -> None:
        path = events_path_of(self.store, self.run_id)
        if path is not None:
            try:
                src = FileLogSource(path)
            except OSError as exc:
                self._fail("run_unreadable", f"cannot read {path}: {exc}")
                return
            self.source = src
            self.query_one(EventLog).set_source(src)
            shared = self._shared_model()
            if shared is not None and len(src) - shared.last_seq <= _ADOPT_GAP:
                self._index_file(src)
                self.run_worker(self._adopt_model(shared), group="run-adopt")
            else:
                self._fold_file(src)
        else:
            self.run_worker(self._load_from_store(), exclusive=True, group="run-load")

    async def _load_from_store(self) -> None:
        try:
            envs = await self.store.events.read_range(self.run_id, 1)
        except MfmError as exc:
            self._fail(exc.info.code, exc.info.message)
            return
        src = ListLogSource(envs)
        self.source = src
        model = self._shared_model() or RunModel(self.run_id)
        model.apply(envs)
        await self._adopt_model(model)
        self.query_one(EventLog).set_source(src)

    def _shared_model(self) -> RunModel | None:
        """The app watcher's model of this run (already folded), when it has one."""
        models = getattr(getattr(self.app, "watcher", None), "models", None)
        model = models.get(self.run_id) if isinstance(models, dict) else None
        return model if isinstance(model, RunModel) and model.last_seq > 0 else None

    @work(thread=True, exclusive=True, group="run-index")
    def _index_file(self, src: FileLogSource) -> None:
        src.build_index()
        self.app.call_from_thread(self.query_one(EventLog).index_ready)

    @work(thread=True, exclusive=True, group="run-fold")
    def _fold_file(self, src: FileLogSource) -> None:
        """Index the whole file, then fold it into a fresh model (off the UI thread).

        See ``mfm_tui.log_index.fold_file``: only the lines the model needs are decoded.
        """
        src.build_index()
        self.app.call_from_thread(self.query_one(EventLog).index_ready)
        model = fold_file(src, self.run_id)
        self.app.call_from_thread(self._adopt_model_sync, model)

    def _adopt_model_sync(self, model: RunModel) -> None:
        self.run_worker(self._adopt_model(model), group="run-adopt")

    async def _adopt_model(self, model: RunModel) -> None:
        """Give the model its manifest, plan shape, lease and cancel flag, then show it."""
        await self._adopt_manifest(model)
        await self._refresh_lease(model)
        # Lines that arrived while folding.
        if isinstance(self.source, FileLogSource):
            model.apply(self._decode_range(model.last_seq, len(self.source)))
        self.model = model
        self._model_ready = True
        self._render_all()

    async def _adopt_manifest(self, model: RunModel) -> None:
        """Load the run's manifest and its plan shape into ``model`` (once its ``RunStarted`` is known)."""
        if model.manifest_id is not None and model.manifest is None:
            try:
                raw = await read_canonical_json(self.store.artifacts, ArtifactId(model.manifest_id))
                manifest = RunManifest.model_validate(raw)
            except Exception as exc:  # the graph still shows the states seen in events
                model.anomalies.append(f"manifest unreadable: {exc}"[:200])
            else:
                resolver = self._plan_resolver or self._app_attr("plan_resolver")
                shape = None
                if resolver is not None:
                    try:
                        shape = resolver(manifest)
                    except Exception as exc:
                        model.anomalies.append(f"plan unavailable: {exc}"[:200])
                if shape is not None and not isinstance(shape, PlanShape):
                    shape = PlanShape.from_plan(shape) if hasattr(shape, "graph") else None
                if shape is not None:
                    model.set_plan(shape)
                model.set_manifest(manifest)

    async def _refresh_lease(self, model: RunModel) -> None:
        probe = self._lease_probe or self._app_attr("lease_probe")
        if probe is not None:
            try:
                model.set_lease(probe(self.run_id))
            except Exception:
                model.set_lease(LeaseStatus.UNKNOWN)
        cancel = getattr(self.store.events, "cancel_request", None)
        if cancel is not None:
            with contextlib.suppress(Exception):
                model.set_cancel_requested(await cancel(self.run_id) is not None)

    def _decode_range(self, start: int, stop: int) -> list[EventEnvelope]:
        out: list[EventEnvelope] = []
        for i in range(start, stop):
            raw = self.source.raw(i)
            if raw is None:
                break
            try:
                out.append(decode_envelope(raw))
            except MfmError as exc:
                self.model.anomalies.append(f"[{exc.info.code}] line {i + 1}")
        return out

    def _fail(self, code: str, message: str) -> None:
        self.load_error = (code, message)
        self.query_one(RunHeader).update(f"{self.run_id}  [{code}] {message}")

    # ------------------------------------------------------------------ live updates

    async def _timed_poll(self) -> None:
        """The timer: every 100 ms while the run is live, once a second once it has finished."""
        self._ticks += 1
        if self._model_ready and self.model.status.is_finished and self._ticks % 10:
            return
        await self.poll()

    async def poll(self) -> None:
        """Pick up appended events (the timer calls it; tests call it directly)."""
        if self._polling or self.load_error is not None:
            return
        self._polling = True
        try:
            added = 0
            if isinstance(self.source, FileLogSource):
                before = len(self.source)
                added = self.source.refresh()
                if added and self._model_ready:
                    self.model.apply(self._decode_range(before, len(self.source)))
            elif isinstance(self.source, ListLogSource):
                head = await self.store.events.head_seq(self.run_id)
                if head > len(self.source):
                    envs = await self.store.events.read_range(self.run_id, len(self.source) + 1)
                    added = self.source.extend(envs)
                    if self._model_ready:
                        self.model.apply(envs)
            if added:
                if self._model_ready and self.model.manifest is None and self.model.manifest_id is not None:
                    # Opened before RunStarted landed (a run just started): now its manifest and plan shape
                    # are known, so the graph can show the whole plan instead of the states seen so far.
                    await self._adopt_manifest(self.model)
                if self.model.status.is_finished is False:
                    await self._refresh_lease(self.model)
                self.query_one(EventLog).lines_appended(added)
                self._render_all()
        except MfmError as exc:
            self.notify(f"[{exc.info.code}] {exc.info.message}", severity="error")
        finally:
            self._polling = False

    def tick(self) -> None:
        """Once a second: countdowns and durations move (nothing to do for a finished run)."""
        if not self._model_ready or self.model.status.is_finished or self.as_of is not None:
            return
        now = self.clock.now_millis()
        if any(sv.status is StateStatus.RETRYING for sv in self.model.states.values()):
            self.query_one(StateGraph).tick(now)
        self._render_header(now)
        self._render_panel(now)

    # ------------------------------------------------------------------ rendering

    def _graph_shape(self) -> tuple[list[str], list[tuple[str, str]]]:
        m = self.model
        if m.plan is not None:
            nodes = [str(s) for s in m.plan.state_ids]
            nodes += [str(s) for s in m.states if s not in set(m.plan.state_ids)]
            return nodes, [(str(a), str(b)) for a, b in m.plan.edges]
        nodes = [str(s) for s in m.states]
        return nodes, [(a, b) for a, b in itertools.pairwise(nodes)]

    @property
    def view_model(self) -> RunModel:
        """The model shown: the live one, or the run as of ``as_of`` while time travelling."""
        return self._past if self.as_of is not None and self._past is not None else self.model

    def _now(self) -> int:
        if self.as_of is not None and self._past_millis is not None:
            return self._past_millis
        return self.clock.now_millis()

    def _render_all(self) -> None:
        now = self._now()
        nodes, edges = self._graph_shape()
        graph = self.query_one(StateGraph)
        graph.set_graph(nodes, edges, {str(k): v for k, v in self.view_model.states.items()}, now)
        if self.selected is None and graph.cursor is not None:
            self.selected = graph.cursor
        self._render_header(now)
        self._render_panel(now)

    def _render_header(self, now: int | None = None) -> None:
        if self.load_error is not None:
            return
        now = self._now() if now is None else now
        note = "" if self._model_ready else "loading…"
        self.query_one(RunHeader).show(self.view_model, now, note, wide=self.app.size.width >= 130)

    def _render_panel(self, now: int) -> None:
        sv = self.view_model.states.get(self.selected) if self.selected else None  # type: ignore[call-overload]
        self.query_one(StatePanel).show(sv, now)
        self.query_one("#panel-box").border_title = sv.short_name if sv is not None else "State"

    def _set_log_title(self) -> None:
        log = self.query_one(EventLog)
        parts = ["Events", "following" if log.follow else "paused (f follows)"]
        if log.filter.active:
            parts.append(f"filter: {log.filter.describe()}  {log.row_count}/{len(log.source)}")
        if log.search:
            parts.append(f"find: {log.search!r}")
        self.query_one("#log-box").border_title = "  ".join(parts)

    # ------------------------------------------------------------------ messages

    async def on_store_changed(self, message: StoreChanged) -> None:
        """The app's store watcher saw this run grow (``app.sync_store()`` in tests)."""
        if self.run_id in message.run_ids:
            await self.poll()

    def set_glyphs(self, glyphs: Any) -> None:
        """The app's theme changed: switch between Unicode and ASCII drawing."""
        self._ascii = bool(getattr(glyphs, "ascii", False))
        self.query_one(StateGraph).ascii_only = self._ascii
        self.query_one(StatePanel).ascii_only = self._ascii
        self.query_one(RunHeader).ascii_only = self._ascii
        self.query_one(EventLog).ascii_only = self._ascii
        if self._model_ready:
            self._render_all()

    @on(StateGraph.StateHighlighted)
    def _on_highlight(self, event: StateGraph.StateHighlighted) -> None:
        self.selected = event.state_id
        self._render_panel(self.clock.now_millis())

    @on(StateGraph.StateSelected)
    def _on_state_selected(self, event: StateGraph.StateSelected) -> None:
        self.selected = event.state_id
        self._render_panel(self.clock.now_millis())
        if self.has_class("-narrow"):
            self.add_class("-panel-open")

    @on(EventLog.FollowChanged)
    @on(EventLog.ViewChanged)
    def _on_log_changed(self) -> None:
        self._set_log_title()

    @on(EventLog.EventOpened)
    def _on_event_opened(self, event: EventLog.EventOpened) -> None:
        self.app.push_screen(EventDialog(event.seq, event.raw))

    @on(Input.Submitted, "#log-filter")
    def _on_filter_submitted(self, event: Input.Submitted) -> None:
        flt, search = parse_query(event.value)
        box = self.query_one("#log-filter", Input)
        box.remove_class("-shown")
        log = self.query_one(EventLog)
        log.apply_filter(flt, search)
        log.focus()
        if search:
            log.cursor = log.row_count
            log.find(backwards=True)
        self._set_log_title()

    # ------------------------------------------------------------------ actions

    def action_back(self) -> None:
        if self.as_of is not None:
            self.set_as_of(None)
            return
        box = self.query_one("#log-filter", Input)
        if box.has_class("-shown"):
            box.remove_class("-shown")
            self.query_one(EventLog).focus()
            return
        if self.has_class("-panel-open"):
            self.remove_class("-panel-open")
            self.query_one(StateGraph).focus()
            return
        log = self.query_one(EventLog)
        if log.filter.active or log.search:
            log.apply_filter(LogFilter())
            self._set_log_title()
            return
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def action_toggle_follow(self) -> None:
        self.query_one(EventLog).action_toggle_follow()

    def action_filter(self) -> None:
        box = self.query_one("#log-filter", Input)
        box.add_class("-shown")
        box.focus()

    def action_find_next(self) -> None:
        self.query_one(EventLog).find()

    def action_find_previous(self) -> None:
        self.query_one(EventLog).find(backwards=True)

    def action_log(self, action: str) -> None:
        getattr(self.query_one(EventLog), f"action_{action}")()

    def action_switch_focus(self) -> None:
        graph, log = self.query_one(StateGraph), self.query_one(EventLog)
        (log if graph.has_focus else graph).focus()

    def action_copy_id(self) -> None:
        copy_text(self.app, str(self.run_id), "run id")

    def artifact_entries(self) -> list[ArtifactEntry]:
        """The selected state's snapshots and facts first, then the run's manifest, snapshots and outputs."""
        m = self.view_model
        out: list[ArtifactEntry] = []
        seen: set[str] = set()

        def add(label: str, aid: str | None, kind: str) -> None:
            if aid and aid not in seen:
                seen.add(aid)
                out.append(ArtifactEntry(label, aid, kind))

        sv = m.states.get(self.selected) if self.selected else None  # type: ignore[call-overload]
        if sv is not None:
            for fact in sv.facts:
                add(f"fact {fact.key}", fact.payload_id, "FactPayload")
            last = sv.last
            if last is not None:
                add(f"{sv.short_name} result", last.result_snapshot_id, "ContextSnapshot")
                add(f"{sv.short_name} base", last.base_snapshot_id, "ContextSnapshot")
        add("manifest", m.manifest_id, "Manifest")
        add("checkpoint", m.checkpoint_id, "ContextSnapshot")
        add("final snapshot", m.final_snapshot_id, "ContextSnapshot")
        add("initial snapshot", m.initial_snapshot_id, "ContextSnapshot")
        for fact in m.unattributed_facts:  # recorded while several fan-out attempts were open
            add(f"fact {fact.key}", fact.payload_id, "FactPayload")
        for i in range(max(0, len(self.source) - 5000), len(self.source)):
            raw = self.source.raw(i)
            if raw is None or b'"artifact_written"' not in raw:
                continue
            try:
                ev = decode_envelope(raw).event
            except MfmError:
                continue
            if isinstance(ev, DomainEvent) and isinstance(ev.payload, dict):
                add(f"output seq {i + 1}", str(ev.payload.get("artifact_id") or ev.payload_ref or ""), "Output")
        return out

    def action_artifacts(self) -> None:
        self.app.push_screen(ArtifactScreen(self.store, self.artifact_entries()))

    # ------------------------------------------------------------------ controls and time travel (mfm_tui.commands)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if getattr(self.app, "read_only", False) and action in self.CONTROLS:
            return None  # shown disabled; pressing the key says why (on_key)
        return True

    def on_key(self, event: Key) -> None:
        if getattr(self.app, "read_only", False) and event.key in ("c", "r", "p"):
            event.stop()
            self.notify(commands.read_only_reason(self.app) or "read-only", severity="warning", timeout=4)

    def action_cancel_run(self) -> None:
        commands.cancel_runs(self.app, [self.run_id], current=self.model)

    def action_resume_run(self) -> None:
        commands.resume_runs(self.app, [self.run_id], current=self.model)

    def action_replay_run(self) -> None:
        commands.replay_run_of(self.app, self.run_id, current=self.model)

    def action_diff_state(self) -> None:
        commands.diff_state(self.app, self.view_model, self.selected)

    def action_history(self, step: int) -> None:
        last = len(self.source)
        if last == 0:
            return
        current = self.as_of if self.as_of is not None else last
        target = max(1, min(last, current + step))
        self.set_as_of(None if target >= last and step > 0 else target)

    def action_jump_seq(self) -> None:
        last = len(self.source)
        if last:
            self.app.push_screen(SeqPrompt(last), self.set_as_of)

    def set_as_of(self, seq: int | None) -> None:
        """Show the run as it was after event ``seq`` (``None``: live again)."""
        if seq is not None and seq > len(self.source):
            seq = None
        self.as_of = seq
        banner = self.query_one("#time-banner", Static)
        if seq is None:
            self._past = None
            self._past_millis = None
            self._history = None
            banner.update("")
            self.remove_class("-time-travel")
        else:
            self._past, self._past_millis = self._fold_until(seq)
            dash = "-" if self.ascii_only else "—"
            banner.update(f" as of seq {seq} of {len(self.source)} {dash} [ ] step, t jump, esc returns to live")
            self.add_class("-time-travel")
            log = self.query_one(EventLog)
            if not log.filter.active:
                if log.follow:
                    log.action_toggle_follow()
                log.cursor = seq - 1
        self._render_all()

    def _fold_until(self, seq: int) -> tuple[RunModel, int | None]:
        """A fresh model of events 1..``seq``. For an events file only the lines the model needs are decoded
        (kernel, facts, retries: raw-byte scans, cached while time travelling), as in ``_fold_file``."""
        live = self.model
        past = RunModel(self.run_id, plan=live.plan, manifest=live.manifest, lease=LeaseStatus.NONE)
        src = self.source
        if not isinstance(src, FileLogSource):
            envs = self._decode_range(0, seq)
            past.apply(envs)
            return past, envs[-1].ts_millis if envs else None
        cache = self._history
        if cache is None or cache[0] < seq:
            total = len(src)
            wanted = src.lines_containing(_FOLD_NEEDLES, total)
            decoded: list[EventEnvelope] = []
            for start in range(0, len(wanted), 4096):
                for raw in src.read_lines(wanted[start : start + 4096]):
                    with contextlib.suppress(MfmError):
                        decoded.append(decode_envelope(raw))
            cache = self._history = (total, decoded)
        for env in cache[1][: bisect.bisect_right(cache[1], seq, key=lambda e: e.seq)]:
            past.last_seq = env.seq - 1  # the lines skipped are domain events the model only counts
            past.apply((env,))
        past.event_count = past.last_seq = seq
        last_raw = src.raw(seq - 1)
        return past, summarize(last_raw).ts_millis if last_raw is not None else None
