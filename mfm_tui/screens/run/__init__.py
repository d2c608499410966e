"""One run, live: header, the plan's state graph, the selected state's details and the event log.

The event log reads the run's events file directly when the store has one (``FsStore.events_path``): the tail is on
screen before anything else is read (its first frame shows the end), the offset index and the run model's fold are
built in background threads once that frame is drawn, and appended lines are picked up as soon as the file changes
(inotify read by the event loop, ``mfm_tui.log_tail.FileWatch``; a timer polls once a second as the fallback, ten
times a second where there is no inotify). Stores without files (memory, PostgreSQL) are read
through ``read_range`` from the last seq. The screen's services (``store``, ``clock``, ``plan_resolver``,
``lease_probe``) come from the app (``AppServices``) and can also be passed in.

The screen owns two helpers that hold no widget: a ``RunLoader`` (``loader``: opening the events, adopting the
folded model, polling) and a ``RunHistory`` (``history``: time travel's folds). ``EventDialog`` (``event_dialog``)
shows one event's envelope.

Layout: at 120x40 the graph and the state panel sit side by side over the log; below 100 columns the graph and the
log stack and the panel replaces the graph on ``enter`` (``esc`` brings the graph back).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult, SuspendNotSupported
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Key, Resize
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Input, Static

from engine.config import RunManifest
from engine.errors import MfmError
from engine.ids import RunId
from engine.lazy import lazy_names
from engine.runtime import Clock, SystemClock
from mfm_tui import controller, screens, shell
from mfm_tui.clipboard import copy_text
from mfm_tui.glyphs import ASCII, UNICODE, Glyphs, ascii_text
from mfm_tui.log_index import (
    FileLogSource,
    LogFilter,
    LogSource,
    event_error,
    fold_file,
    parse_query,
    query_error,
)
from mfm_tui.log_tail import FileWatch
from mfm_tui.messages import CancelRequested, StoreChanged
from mfm_tui.run_model import LeaseStatus, PlanShape, RunModel, StateStatus, child_summary
from mfm_tui.screens.confirm import SeqPrompt
from mfm_tui.screens.dialogs import ErrorDialog
from mfm_tui.screens.run.children import ChildPicker
from mfm_tui.screens.run.history import RunHistory
from mfm_tui.screens.run.loader import ADOPT_GAP, RunLoader, events_path_of
from mfm_tui.services import AppServices, services_of
from mfm_tui.widgets.event_log import EventLog
from mfm_tui.widgets.footer import KeyFooter
from mfm_tui.widgets.plan_graph import PlanGraph
from mfm_tui.widgets.run_header import RunHeader
from mfm_tui.widgets.state_panel import StatePanel

if TYPE_CHECKING:
    from mfm_tui.screens.artifact import ArtifactEntry
    from mfm_tui.screens.run.event_dialog import EventDialog

__all__ = ["ChildPicker", "EventDialog", "RunHistory", "RunLoader", "RunScreen", "events_path_of"]

# EventDialog (rich.syntax, with pygments: ~55 ms of imports) is imported when first read (``enter`` on a line), not
# before the run's first frame (issue 15).
__getattr__, __dir__ = lazy_names(__name__, {"EventDialog": "mfm_tui.screens.run.event_dialog"}, globals())

POLL_SECONDS = 0.1
"""The timer's period while the run's log file is not watched (no watchfiles, no inotify, or no file)."""
FALLBACK_SECONDS = 1.0
"""The timer's period while the log file is watched or the run has finished (a change the watch missed)."""
FOLLOW_STEP_MS = 10
"""A change of the watched log is acted on after this much quiet (``watchfiles``' step: also how often its thread
wakes while nothing changes; 10 ms costs about 0.5 % of a core while a run screen is open)."""
FOLLOW_MAX_MS = 40
"""…and at least this often under a continuous stream of appends (``watchfiles``' debounce)."""
NARROW = 100


class RunScreen(Screen[None]):
    """``RunScreen(run_id=...)``: the live view of one run.

    Its header, graph, state panel and log are redrawn from the run's model (``model``; while time travelling, the
    past model ``view_model`` as of ``as_of``). The controls (``c`` ``r`` ``p`` ``d``) go through
    ``mfm_tui.controller``; in read-only mode they are shown disabled and say why.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", tooltip="Close the panel / clear the filter / back to the runs"),
        Binding("backspace", "to_parent", "Parent", show=False, tooltip="A child run: back to its parent run"),
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
        Binding("R", "retry_now", "Retry now", show=False, tooltip="Cut the selected (or next) retry's backoff short"),
        Binding("L", "logs", "Logs", show=False, tooltip="Worker log and exec stdout/stderr, following like tail -f"),
        Binding("T", "timeline", "Timeline", show=False, tooltip="Attempt timeline of the selected state"),
        Binding("E", "rerun", "Re-run", show=False, tooltip="Re-run with edited parameters (start form pre-filled)"),
        Binding("exclamation_mark", "shell", "Shell", show=False, tooltip="Open $SHELL in the run's folder"),
        Binding("w", "toggle_wrap", "Wrap", show=False, tooltip="Log: show the selected line in full, wrapped"),
        Binding(
            "e", "full_error", "Error", show=False, tooltip="The full error of the selected event, else of the state"
        ),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | escape | Close the panel / clear the filter / leave time travel / back to the runs (or the parent run). |
    | backspace | A child run opened from its parent: back to the parent, where it was. |
    | f | Follow new events on/off. |
    | slash | Filter the log (`kind=… state=… text=…`; bare words find). |
    | n, N | Next / previous log line with the find text. |
    | a | Artifacts of the selected state and of the run. |
    | tab | Move between the state graph and the log. |
    | j, k, g, G | Log: next, previous, first, last event. |
    | y | Copy the run id. |
    | c | Cancel the run (confirmation first). |
    | r | Resume the run (a failed run gets a recovery run). |
    | p | Replay the finished run and compare. |
    | d | Diff the selected state's result against its base. |
    | [, ] | Time travel: one event back / on. |
    | t | Time travel: show the run as of a seq. |
    | R | Retry now: cut the selected (or next) retry's backoff short (confirmation first). |
    | L | Logs: the worker log and exec stdout/stderr, following. |
    | T | Attempt timeline of the selected state. |
    | E | Re-run with edited parameters (the start form, pre-filled from the run's manifest). |
    | ! | Open $SHELL in the run's folder (MFM_RUN_ID, MFM_STORE set); on return, refresh and offer resume. |
    | w | Wrap: the selected log line in full, wrapped, under the log (on/off). |
    | e | The full error of the selected event (a `StateFailed` line), else of the selected state, else of the run. |
    """

    DEFAULT_CSS = """
    RunScreen > #time-banner { display: none; height: 1; background: $warning; color: $background; text-style: bold; }
    RunScreen.-time-travel > #time-banner { display: block; }
    RunScreen > #breadcrumb { display: none; height: 1; color: $text-muted; }
    RunScreen.-child > #breadcrumb { display: block; }
    App.-theme-mfm-ascii RunScreen > #time-banner { background: $foreground; color: $background; }
    """

    CONTROLS: ClassVar[frozenset[str]] = frozenset({"cancel_run", "resume_run", "replay_run", "retry_now", "rerun"})
    """Actions that write: disabled (dimmed, with a message when pressed) in read-only mode."""

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
        path: tuple[tuple[RunId, str], ...] = (),
    ) -> None:
        super().__init__()
        self.run_id = RunId(run_id)
        self.path = path
        """A child run opened from its parent's screen: the ``(run id, spawning state)`` of each ancestor, root
        first (the breadcrumb; ``esc``/``backspace`` return to the parent screen below this one)."""
        self._store = store
        self._clock = clock
        self._plan_resolver = plan_resolver
        self._lease_probe = lease_probe
        self._ascii = ascii_only
        self._poll_enabled = poll
        self.loader = RunLoader(self.run_id)
        """Reads the run's events and owns its model."""
        self.history = RunHistory(self.loader)
        """Time travel's folds."""
        self.selected: str | None = None
        self._poll_timer: Timer | None = None
        self._poll_period = POLL_SECONDS
        self.timed_polls = 0
        """How many times the fallback timer polled (tests and benchmarks: idle wakeups)."""
        self._following = False
        """The run's log file is watched (inotify through ``watchfiles``): the timer only polls once a second."""
        self.as_of: int | None = None
        """Time travel: the seq the screen shows the run as of (``None``: live)."""
        self._past: RunModel | None = None
        self._past_millis: int | None = None

    # ------------------------------------------------------------------ services and state

    @property
    def services(self) -> AppServices | None:
        """The app's services (``None`` in another host app, e.g. a benchmark's: pass ``store`` and ``clock``)."""
        app = self.app
        return app if isinstance(app, AppServices) else None

    @property
    def store(self) -> Any:
        if self._store is not None:
            return self._store
        services = self.services
        return services.store if services is not None else None

    @property
    def clock(self) -> Clock:
        if self._clock is not None:
            return self._clock
        services = self.services
        return services.clock if services is not None else SystemClock()

    @property
    def ascii_only(self) -> bool:
        if self._ascii is not None:
            return self._ascii
        services = self.services
        if services is not None:
            return services.ascii_only
        theme = self.app.theme or ""
        return "ascii" in theme or "mono" in theme

    @property
    def model(self) -> RunModel:
        """The run's live model (empty until ``_model_ready``)."""
        return self.loader.model

    @property
    def source(self) -> LogSource:
        """The run's event lines (the events file, or the envelopes read from the store)."""
        return self.loader.source

    @property
    def load_error(self) -> tuple[str, str] | None:
        return self.loader.load_error

    @property
    def _model_ready(self) -> bool:
        return self.loader.ready

    @property
    def view_model(self) -> RunModel:
        """The model shown: the live one, or the run as of ``as_of`` while time travelling."""
        return self._past if self.as_of is not None and self._past is not None else self.model

    # ------------------------------------------------------------------ compose

    def compose(self) -> ComposeResult:
        yield Static("", id="breadcrumb")
        yield RunHeader(ascii_only=self.ascii_only, id="run-header")
        yield Static("", id="time-banner")
        with Horizontal(id="run-top"):
            with Vertical(id="graph-box"):
                yield PlanGraph(id="graph")
            with VerticalScroll(id="panel-box"):
                yield StatePanel(ascii_only=self.ascii_only, id="state-panel")
        with Vertical(id="log-box"):
            yield EventLog(id="log")
            yield Static("", id="log-detail")
        yield Input(placeholder="kind=StateFailed state=item_2 text=503   (bare words: find)", id="log-filter")
        yield KeyFooter()

    # ------------------------------------------------------------------ handlers

    def on_mount(self) -> None:
        services = self.services
        self.loader.store = self.store
        self.loader.plan_resolver = self._plan_resolver or (services.plan_resolver if services is not None else None)
        self.loader.lease_probe = self._lease_probe or (services.lease_probe if services is not None else None)
        self.loader.crash_loop_limit = services.watcher.crash_loop_limit if services is not None else None
        graph = self.query_one(PlanGraph)
        graph.ascii_only = self.ascii_only
        self.query_one(EventLog).ascii_only = self.ascii_only
        self.query_one("#graph-box").border_title = "States"
        self.query_one("#panel-box").border_title = "State"
        self._set_log_title()
        self._apply_width(self.app.size.width)
        self.set_class(bool(self.path), "-child")
        self._render_breadcrumb()
        self.query_one(EventLog).focus()
        self._render_header()
        self._open()
        self.set_interval(1.0, self.tick)
        poll = self._poll_enabled if self._poll_enabled is not None else services is None or services.watch_store
        if poll:
            self._poll_timer = self.set_interval(POLL_SECONDS, self._timed_poll)
            source = self.loader.source
            if isinstance(source, FileLogSource):
                self.run_worker(self._follow_file(source), group="run-follow", exclusive=True, exit_on_error=False)

    def on_resize(self, event: Resize) -> None:
        self._apply_width(event.size.width)

    async def on_store_changed(self, message: StoreChanged) -> None:
        """The app's store watcher saw this run grow (``app.sync_store()`` in tests)."""
        if self.run_id in message.run_ids:
            await self.poll()
        elif self._model_ready and not message.run_ids.isdisjoint(self.model.children):
            self._render_all()  # a child's stream grew (e.g. its RunCompleted): the state's badge changes

    async def on_cancel_requested(self, message: CancelRequested) -> None:
        """A cancel of this run was requested: it shows "cancelling" until ``RunCompleted`` lands."""
        if self.run_id in message.run_ids:
            with contextlib.suppress(Exception):
                await self.loader.refresh_lease(self.model)
                self._render_all()

    @on(PlanGraph.StateHighlighted)
    def _on_highlight(self, event: PlanGraph.StateHighlighted) -> None:
        self.selected = event.state_id
        self._render_panel(self.clock.now_millis())

    @on(PlanGraph.StateSelected)
    def _on_state_selected(self, event: PlanGraph.StateSelected) -> None:
        self.selected = event.state_id
        refs = self.view_model.children_of_state(event.state_id)  # type: ignore[arg-type]
        if refs:  # a state that spawned child runs: drill into one
            title = f"{event.state_id.rsplit('.', 1)[-1]}: {len(refs)} child run{'s' if len(refs) != 1 else ''}"
            picker = ChildPicker(title, refs, self._all_models(), self.app_glyphs)
            self.app.push_screen(picker, lambda chosen: self.open_child(chosen, event.state_id))
            return
        self._render_panel(self.clock.now_millis())
        if self.has_class("-narrow"):
            self.add_class("-panel-open")

    @on(EventLog.FollowChanged)
    @on(EventLog.ViewChanged)
    def _on_log_changed(self) -> None:
        self._set_log_title()

    @on(EventLog.CursorMoved)
    def _on_log_cursor(self) -> None:
        self._show_detail()

    @on(EventLog.FollowChanged)
    def _on_follow_changed(self, event: EventLog.FollowChanged) -> None:
        graph = self.query_one(PlanGraph)
        if event.follow and not graph.following and self._model_ready:  # f / G: the graph and panel follow too
            graph.following = True
            self._render_all()

    @on(EventLog.EventOpened)
    def _on_event_opened(self, event: EventLog.EventOpened) -> None:
        self.app.push_screen(screens.EventDialog(event.seq, event.raw))

    @on(Input.Submitted, "#log-filter")
    def _on_filter_submitted(self, event: Input.Submitted) -> None:
        box = self.query_one("#log-filter", Input)
        problem = query_error(event.value)
        if problem is not None:  # said in place; the prompt stays open to be fixed
            box.add_class("-invalid")
            box.border_title = problem
            self.notify(problem, title="Filter", severity="error", timeout=6)
            return
        box.remove_class("-invalid")
        box.border_title = None
        flt, search = parse_query(event.value)
        box.remove_class("-shown")
        log = self.query_one(EventLog)
        cursor = log.line_at(log.cursor) if 0 <= log.cursor < log.row_count else -1
        log.apply_filter(flt, search)
        log.focus()
        if search:
            if log.view is not None and cursor >= 0:  # the filtered view: from the first shown line at the cursor
                log.cursor = min(log.row_count - 1, bisect.bisect_left(log.view, cursor))
            log.find(from_cursor=True)
        self._set_log_title()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self._read_only and action in self.CONTROLS:
            return None  # shown disabled; pressing the key says why (on_key)
        return True

    def on_key(self, event: Key) -> None:
        if self._read_only and event.key in ("c", "r", "p", "R", "E"):
            event.stop()
            self.notify(
                controller.read_only_reason(services_of(self.app)) or "read-only", severity="warning", timeout=4
            )

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

    def action_to_parent(self) -> None:
        if self.path and len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def open_child(self, child: RunId | None, state_id: str) -> None:
        """Drill into ``child`` (spawned by ``state_id``): its run screen on top of this one, with the breadcrumb."""
        if child is None:
            return
        self.app.push_screen(RunScreen(run_id=child, path=(*self.path, (self.run_id, state_id))))

    def action_toggle_follow(self) -> None:
        log, graph = self.query_one(EventLog), self.query_one(PlanGraph)
        if log.follow and not graph.following:  # only the graph had stopped: f follows there again
            graph.following = True
            if self._model_ready:
                self._render_all()
            return
        log.action_toggle_follow()

    def action_filter(self) -> None:
        box = self.query_one("#log-filter", Input)
        box.add_class("-shown")
        box.focus()

    def action_find_next(self) -> None:
        self._find(backwards=False)

    def action_find_previous(self) -> None:
        self._find(backwards=True)

    def _find(self, *, backwards: bool) -> None:
        log = self.query_one(EventLog)
        if not log.search:
            self.notify("nothing to find: / then words (kind=, state=, text= filter)", timeout=3)
            return
        log.find(backwards=backwards)

    def action_log(self, action: str) -> None:
        getattr(self.query_one(EventLog), f"action_{action}")()

    def action_switch_focus(self) -> None:
        graph, log = self.query_one(PlanGraph), self.query_one(EventLog)
        (log if graph.has_focus else graph).focus()

    def action_copy_id(self) -> None:
        copy_text(self.app, str(self.run_id), "run id")

    def action_cancel_run(self) -> None:
        controller.cancel_runs(services_of(self.app), [self.run_id], current=self.model)

    def action_resume_run(self) -> None:
        controller.resume_runs(services_of(self.app), [self.run_id], current=self.model)

    def action_replay_run(self) -> None:
        controller.replay_run_of(services_of(self.app), self.run_id, current=self.model)

    def action_retry_now(self) -> None:
        controller.retry_now(services_of(self.app), self.run_id, self.selected, current=self.model)

    def action_timeline(self) -> None:
        sv = self.view_model.states.get(self.selected) if self.selected else None  # type: ignore[call-overload]
        if sv is None:
            self.notify("select a state in the graph first", severity="warning", timeout=3)
            return
        self.app.push_screen(screens.TimelineScreen(sv, self._now(), ascii_only=self.ascii_only))

    def action_rerun(self) -> None:
        manifest = self.model.manifest
        if manifest is None:
            self.notify("the run's manifest is not loaded (yet): nothing to pre-fill", severity="warning", timeout=4)
            return
        params = manifest.input_params if isinstance(manifest.input_params, dict) else {}
        screen = screens.StartScreen(op_id=str(manifest.op_id), params=params, rerun_of=self.run_id)
        self.app.push_screen(screen)

    async def action_shell(self) -> None:
        command = shell.shell_command(self.store, self.run_id, os.environ)
        try:
            with self.app.suspend():
                code = shell.run_shell(command)
        except SuspendNotSupported:
            self.notify("this terminal cannot suspend the TUI: open a shell elsewhere", severity="warning", timeout=5)
            return
        except OSError as exc:
            self.notify(f"cannot start {command.argv[0]}: {exc.strerror or exc}", severity="error", timeout=5)
            return
        services = self.services
        if services is not None:
            with contextlib.suppress(Exception):
                await services.sync_store()
        await self.poll()
        self.notify(f"back from the shell (exit {code})", timeout=3)
        if services is not None and not services.read_only and shell.offers_resume(self.model):
            controller.resume_runs(services, [self.run_id], current=self.model)

    def action_logs(self) -> None:
        self.app.push_screen(screens.LogsScreen(self.run_id))

    def action_diff_state(self) -> None:
        controller.diff_state(services_of(self.app), self.view_model, self.selected)

    def action_artifacts(self) -> None:
        self.app.push_screen(screens.ArtifactScreen(self.store, self.artifact_entries()))

    def action_history(self, step: int) -> None:
        last = len(self.source)
        if last == 0:
            return
        current = self.as_of if self.as_of is not None else last
        target = max(1, min(last, current + step))
        self.set_as_of(None if target >= last and step > 0 else target)

    def action_toggle_wrap(self) -> None:
        self.query_one("#log-detail", Static).toggle_class("-shown")
        self._show_detail()

    def action_full_error(self) -> None:
        """``e``: the whole error, wrapped in a dialog, at any terminal size."""
        log = self.query_one(EventLog)
        found: tuple[str, str] | None = None
        title = ""
        if log.has_focus and 0 <= log.cursor < log.row_count:
            raw = self.source.raw(log.line_at(log.cursor))
            found = event_error(raw) if raw is not None else None
            title = f"Error at seq {log.line_at(log.cursor) + 1}"
        sv = self.view_model.states.get(self.selected) if self.selected else None  # type: ignore[call-overload]
        if found is None and sv is not None and sv.error is not None:
            found, title = sv.error, f"Error of {sv.short_name}"
        if found is None and self.view_model.error is not None:
            found, title = self.view_model.error, f"Error of run {self.run_id[:8]}"
        if found is None:
            self.notify("no error here: select a failed state or a StateFailed line", timeout=3)
            return
        self.app.push_screen(ErrorDialog(found[0], found[1], title=title))

    def action_jump_seq(self) -> None:
        last = len(self.source)
        if last:
            self.app.push_screen(SeqPrompt(last), self.set_as_of)

    # ------------------------------------------------------------------ public

    def tick(self) -> None:
        """Once a second: countdowns and durations move (nothing to do for a finished run)."""
        if not self._model_ready or self.model.status.is_finished or self.as_of is not None:
            return
        now = self.clock.now_millis()
        if any(sv.status is StateStatus.RETRYING for sv in self.model.states.values()):
            self.query_one(PlanGraph).tick(now)
        self._render_header(now)
        self._render_panel(now)

    async def poll(self) -> None:
        """Pick up appended events (the timer calls it; tests call it directly)."""
        try:
            added = await self.loader.poll()
        except MfmError as exc:
            self.notify(f"[{exc.info.code}] {exc.info.message}", severity="error")
            return
        if added:
            self.query_one(EventLog).lines_appended(added)
            self._render_all()

    def set_glyphs(self, glyphs: Glyphs) -> None:
        """The app's theme changed: switch between Unicode and ASCII drawing."""
        self._ascii = glyphs.ascii
        self.query_one(PlanGraph).ascii_only = self._ascii
        self.query_one(StatePanel).ascii_only = self._ascii
        self.query_one(RunHeader).ascii_only = self._ascii
        self.query_one(EventLog).ascii_only = self._ascii
        if self._model_ready:
            self._render_all()

    def set_as_of(self, seq: int | None) -> None:
        """Show the run as it was after event ``seq`` (``None``: live again)."""
        if seq is not None and seq > len(self.source):
            seq = None
        self.as_of = seq
        banner = self.query_one("#time-banner", Static)
        if seq is None:
            self._past = None
            self._past_millis = None
            self.history.clear()
            banner.update("")
            self.remove_class("-time-travel")
        else:
            self._past, self._past_millis = self.history.fold_until(seq)
            dash = "-" if self.ascii_only else "—"
            banner.update(f" as of seq {seq} of {len(self.source)} {dash} [ ] step, t jump, esc returns to live")
            self.add_class("-time-travel")
            log = self.query_one(EventLog)
            if not log.filter.active:
                if log.follow:
                    log.action_toggle_follow()
                log.cursor = seq - 1
        self._render_all()

    def artifact_entries(self) -> list[ArtifactEntry]:
        """The selected state's snapshots and facts first, then the run's manifest, snapshots and outputs."""
        return screens.run_artifacts(self.view_model, self.selected, self.source)

    # ------------------------------------------------------------------ loading

    def _open(self) -> None:
        try:
            src = self.loader.open_file()
        except MfmError as exc:
            self._fail(exc.info.code, exc.info.message)
            return
        if src is None:
            self.run_worker(self._load_from_store(), exclusive=True, group="run-load")
            return
        self.query_one(EventLog).set_source(src)
        shared = self._shared_model()
        # The index and the fold start after the first frame (the log's tail): their reads would compete with it
        # for the GIL.
        if shared is not None and len(src) - shared.last_seq <= ADOPT_GAP:
            self.call_after_refresh(self._index_file, src)
            self.run_worker(self._adopt_model(shared), group="run-adopt")
        else:
            self.call_after_refresh(self._fold_file, src)

    async def _load_from_store(self) -> None:
        try:
            envs = await self.loader.read_from_store()
        except MfmError as exc:
            self._fail(exc.info.code, exc.info.message)
            return
        model = self._shared_model() or RunModel(self.run_id)
        model.apply(envs)
        await self._adopt_model(model)
        self.query_one(EventLog).set_source(self.source)

    def _shared_model(self) -> RunModel | None:
        """The app watcher's model of this run (already folded), when it has one (not a summary's: it lacks facts)."""
        services = self.services
        model = services.watcher.models.get(self.run_id) if services is not None else None
        return model if model is not None and model.last_seq > 0 and not model.summarized else None

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
        await self.loader.adopt(model)
        self._render_all()

    def _fail(self, code: str, message: str) -> None:
        self.loader.load_error = (code, message)
        self.query_one(RunHeader).update(f"{self.run_id}  [{code}] {message}")

    async def _timed_poll(self) -> None:
        """The timer: every 100 ms while the run is live, once a second once it has finished or while its log file
        is watched (the fallback: a change the watcher missed)."""
        self.timed_polls += 1
        await self.poll()
        self._set_poll_period()

    def _set_poll_period(self) -> None:
        """The timer's period: ``FALLBACK_SECONDS`` while the log is watched or the run has finished, else
        ``POLL_SECONDS`` (a slow timer is not woken ten times a second only to skip)."""
        slow = self._following or (self._model_ready and self.model.status.is_finished)
        period = FALLBACK_SECONDS if slow else POLL_SECONDS
        if self._poll_timer is not None and period != self._poll_period:
            self._poll_timer.stop()
            self._poll_timer = self.set_interval(period, self._timed_poll)
            self._poll_period = period

    async def _follow_file(self, source: FileLogSource) -> None:
        """Poll as soon as the run's log file changes (event-driven tail, ``FileWatch``), until the screen goes;
        without a watch (no watchfiles, no folder) the timer polls every ``POLL_SECONDS``."""
        watch = FileWatch(source.path.parent, [source.path.name], step_ms=FOLLOW_STEP_MS, debounce_ms=FOLLOW_MAX_MS)
        if not watch.start():
            return
        self._following = True
        self._set_poll_period()
        try:
            while await watch.wait():
                await self.poll()
        finally:
            watch.close()
            self._following = False
            with contextlib.suppress(Exception):  # the screen may be going
                self._set_poll_period()

    # ------------------------------------------------------------------ rendering

    @property
    def _read_only(self) -> bool:
        services = self.services
        return services is not None and services.read_only

    def _apply_width(self, width: int) -> None:
        self.set_class(width < NARROW, "-narrow")

    def _now(self) -> int:
        if self.as_of is not None and self._past_millis is not None:
            return self._past_millis
        return self.clock.now_millis()

    def _graph_shape(self) -> tuple[list[str], list[tuple[str, str]]]:
        m = self.model
        if m.plan is not None:
            nodes = [str(s) for s in m.plan.state_ids]
            nodes += [str(s) for s in m.states if s not in set(m.plan.state_ids)]
            return nodes, [(str(a), str(b)) for a, b in m.plan.edges]
        nodes = [str(s) for s in m.states]
        return nodes, [(a, b) for a, b in itertools.pairwise(nodes)]

    @property
    def app_glyphs(self) -> Glyphs:
        return ASCII if self.ascii_only else UNICODE

    def _all_models(self) -> dict[RunId, RunModel]:
        services = self.services
        models = dict(services.watcher.models) if services is not None else {}
        models[self.run_id] = self.model
        return models

    def _badges(self) -> dict[str, str]:
        """``3 children: 2 ✓ 1 ✗`` for each state that spawned child runs (the children's live status)."""
        model = self.view_model
        if not model.children:
            return {}
        models = self._all_models()
        states = {ref.state_id for ref in model.children.values() if ref.state_id is not None}
        badges = {str(s): child_summary(model, models, s).badge for s in states}
        if self.ascii_only:
            badges = {k: v.replace("✓", "ok").replace("✗", "x").replace("⟳", "~") for k, v in badges.items()}
        return badges

    def _render_breadcrumb(self) -> None:
        if not self.path:
            return
        models = self._all_models()
        sep = " > " if self.ascii_only else " › "
        parts = ["runs"]
        for run_id, state_id in self.path:
            parent = models.get(run_id)
            parts.append(f"{parent.op_id if parent is not None and parent.op_id else '?'} {run_id[:8]}")
            parts.append(state_id.rsplit(".", 1)[-1])
        me = models.get(self.run_id)
        parts.append(f"{me.op_id if me is not None and me.op_id else '?'} {self.run_id[:8]}")
        self.query_one("#breadcrumb", Static).update(sep.join(parts) + "   (backspace: parent)")

    def _render_all(self) -> None:
        now = self._now()
        request = self.loader.cancel_request
        self.query_one(EventLog).set_note(
            None
            if request is None or self.as_of is not None
            else (request.requested_at_millis, "operator cancel", f"requested: {request.reason or 'no reason given'}")
        )
        nodes, edges = self._graph_shape()
        graph = self.query_one(PlanGraph)
        graph.set_graph(nodes, edges, {str(k): v for k, v in self.view_model.states.items()}, now, self._badges())
        if self.path:
            self._render_breadcrumb()
        active = _active_state(self.view_model)
        if active is not None and graph.following:  # like the log's follow mode: until the user moves away
            graph.follow(active)
            self.selected = graph.cursor
        if self.selected is None and graph.cursor is not None:
            self.selected = graph.cursor
        self._render_header(now)
        self._render_panel(now)

    def _render_header(self, now: int | None = None) -> None:
        if self.load_error is not None:
            return
        now = self._now() if now is None else now
        note = "" if self._model_ready else "loading…"
        request = self.loader.cancel_request
        if request is not None and self.as_of is None:
            at = time.strftime("%H:%M:%S", time.gmtime(request.requested_at_millis // 1000))
            note = f"{request.reason or 'cancel requested'} at {at}"
        self.query_one(RunHeader).show(self.view_model, now, note, wide=self.app.size.width >= 130)

    def _render_panel(self, now: int) -> None:
        sv = self.view_model.states.get(self.selected) if self.selected else None  # type: ignore[call-overload]
        self.query_one(StatePanel).show(sv, now)
        self.query_one("#panel-box").border_title = sv.short_name if sv is not None else "State"

    def _show_detail(self) -> None:
        detail = self.query_one("#log-detail", Static)
        if detail.has_class("-shown"):
            log = self.query_one(EventLog)
            text = log.text_at(log.cursor)
            detail.update(Text(ascii_text(text) if self.ascii_only else text))

    def _set_log_title(self) -> None:
        log = self.query_one(EventLog)
        parts = ["Events", "following" if log.follow else "paused (f follows)"]
        if log.filter.active:
            parts.append(f"filter: {log.filter.describe()}  {log.row_count}/{len(log.source)}")
        if log.search:
            parts.append(f"find: {log.search!r}" + (f" ({log.find_status})" if log.find_status else ""))
        self.query_one("#log-box").border_title = "  ".join(parts)


def _active_state(model: RunModel) -> str | None:
    """The state the graph and panel follow: the failed one, else one waiting to retry (its error is what matters),
    else the latest attempt in flight."""
    retrying = [sv for sv in model.states.values() if sv.status is StateStatus.RETRYING]
    current = model.current_state
    if model.failed_state is None and retrying:
        current = retrying[-1]
    return str(current.state_id) if current is not None else None
