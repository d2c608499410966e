"""One run, live: header, the plan's state graph, the selected state's details and the event log.

The event log reads the run's events file directly when the store has one (``FsStore.events_path``): the tail is on
screen before anything else is read, the offset index and the run model's fold are built in background threads, and
appended lines are picked up by a cheap ``stat`` every 100 ms. Stores without files (memory, PostgreSQL) are read
through ``read_range`` from the last seq. Everything the screen needs from the app is read from attributes named like
``make_app``'s parameters (``store``, ``clock``, ``plan_resolver``, ``lease_probe``) and can also be passed in.

The screen is split along its seams: loading, folding and polling live in ``_run_loading`` (``RunLoadingMixin``,
``events_path_of``), time travel in ``_run_history`` (``TimeTravelMixin``), the controller's actions and the artifact
entries in ``_run_actions`` (``RunActionsMixin``); bindings, CSS, composition, rendering and message handlers stay here.

Layout: at 120x40 the graph and the state panel sit side by side over the log; below 100 columns the graph and the
log stack and the panel replaces the graph on ``enter`` (``esc`` brings the graph back).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any, ClassVar

from rich.syntax import Syntax
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Key, Resize
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Input, Static

from engine.config import RunManifest
from engine.events import EventEnvelope
from engine.ids import RunId
from engine.runtime import Clock, SystemClock
from mfm_tui import commands
from mfm_tui.clipboard import copy_text
from mfm_tui.log_index import (
    ListLogSource,
    LogFilter,
    LogSource,
    parse_query,
)
from mfm_tui.messages import StoreChanged
from mfm_tui.run_model import LeaseStatus, PlanShape, RunModel, StateStatus
from mfm_tui.screens._run_actions import RunActionsMixin
from mfm_tui.screens._run_history import TimeTravelMixin
from mfm_tui.screens._run_loading import _ADOPT_GAP as _ADOPT_GAP  # re-exported
from mfm_tui.screens._run_loading import RunLoadingMixin, events_path_of
from mfm_tui.widgets.event_log import EventLog
from mfm_tui.widgets.plan_graph import PlanGraph
from mfm_tui.widgets.run_header import RunHeader
from mfm_tui.widgets.state_panel import StatePanel

__all__ = ["EventDialog", "RunScreen", "events_path_of"]

POLL_SECONDS = 0.1
NARROW = 100


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


class RunScreen(RunLoadingMixin, TimeTravelMixin, RunActionsMixin, Screen[None]):
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
                yield PlanGraph(id="graph")
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
        graph = self.query_one(PlanGraph)
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

    # ------------------------------------------------------------------ live updates

    def tick(self) -> None:
        """Once a second: countdowns and durations move (nothing to do for a finished run)."""
        if not self._model_ready or self.model.status.is_finished or self.as_of is not None:
            return
        now = self.clock.now_millis()
        if any(sv.status is StateStatus.RETRYING for sv in self.model.states.values()):
            self.query_one(PlanGraph).tick(now)
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

    def _render_all(self) -> None:
        now = self._now()
        nodes, edges = self._graph_shape()
        graph = self.query_one(PlanGraph)
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
        self.query_one(PlanGraph).ascii_only = self._ascii
        self.query_one(StatePanel).ascii_only = self._ascii
        self.query_one(RunHeader).ascii_only = self._ascii
        self.query_one(EventLog).ascii_only = self._ascii
        if self._model_ready:
            self._render_all()

    @on(PlanGraph.StateHighlighted)
    def _on_highlight(self, event: PlanGraph.StateHighlighted) -> None:
        self.selected = event.state_id
        self._render_panel(self.clock.now_millis())

    @on(PlanGraph.StateSelected)
    def _on_state_selected(self, event: PlanGraph.StateSelected) -> None:
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
            self.query_one(PlanGraph).focus()
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
        graph, log = self.query_one(PlanGraph), self.query_one(EventLog)
        (log if graph.has_focus else graph).focus()

    def action_copy_id(self) -> None:
        copy_text(self.app, str(self.run_id), "run id")

    # ------------------------------------------------------------------ read-only gating (controls: _run_actions)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if getattr(self.app, "read_only", False) and action in self.CONTROLS:
            return None  # shown disabled; pressing the key says why (on_key)
        return True

    def on_key(self, event: Key) -> None:
        if getattr(self.app, "read_only", False) and event.key in ("c", "r", "p"):
            event.stop()
            self.notify(commands.read_only_reason(self.app) or "read-only", severity="warning", timeout=4)
