"""The runs screen (home): every run, most urgent first, with status tabs, a filter and sort keys.

The screen owns no data: it reads the watcher's models (``models``, passed down by the app) and
rebuilds its row order when ``RunsUpdated`` arrives. Row order and filtering are pure functions
(``order_models``, ``RunFilter``) so they are tested without a terminal.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import Input, Static

from engine import Clock
from engine.ids import RunId
from mfm_tui import controller, screens
from mfm_tui.clipboard import copy_text
from mfm_tui.glyphs import UNICODE, Glyphs
from mfm_tui.messages import RunsUpdated
from mfm_tui.run_model import RunDisplayStatus, RunModel, child_summary, link_children
from mfm_tui.services import services_of
from mfm_tui.widgets.footer import KeyFooter
from mfm_tui.widgets.run_table import RowTree, RunTable, now_text
from mfm_tui.widgets.size_notice import SizeNotice
from mfm_tui.widgets.static_update import update_changed
from mfm_tui.widgets.status_tabs import StatusTabs, tab_matches
from mfm_tui.widgets.welcome import Welcome

__all__ = ["SORT_KEYS", "RunFilter", "RunsScreen", "nest_children", "order_models"]

SORT_KEYS = ("urgency", "newest", "oldest", "op", "duration")
LOADING_REBUILD_SECONDS = 0.3

_STATUS_WORDS: Mapping[str, frozenset[RunDisplayStatus]] = {
    **{s.value: frozenset({s}) for s in RunDisplayStatus},
    "lost": frozenset({RunDisplayStatus.WORKER_LOST, RunDisplayStatus.NOT_STARTED, RunDisplayStatus.CRASH_LOOPING}),
    "worker-lost": frozenset({RunDisplayStatus.WORKER_LOST}),
    "not-started": frozenset({RunDisplayStatus.NOT_STARTED}),
    "crash-looping": frozenset({RunDisplayStatus.CRASH_LOOPING}),
    "done": frozenset({RunDisplayStatus.COMPLETED}),
    "ok": frozenset({RunDisplayStatus.COMPLETED}),
    "active": frozenset(
        {
            RunDisplayStatus.RUNNING,
            RunDisplayStatus.RETRYING,
            RunDisplayStatus.CANCELLING,
            RunDisplayStatus.PENDING,
            RunDisplayStatus.STARTING,
        }
    ),
    "finished": frozenset({RunDisplayStatus.COMPLETED, RunDisplayStatus.FAILED, RunDisplayStatus.CANCELLED}),
}


@dataclass(frozen=True, slots=True)
class RunFilter:
    """``op:NAME status:failed id:0c9d word…`` — every term must match (words: op, id, state, error)."""

    ops: tuple[str, ...] = ()
    statuses: frozenset[RunDisplayStatus] | None = None
    id_prefixes: tuple[str, ...] = ()
    words: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> RunFilter:
        ops: list[str] = []
        ids: list[str] = []
        words: list[str] = []
        statuses: set[RunDisplayStatus] | None = None
        for term in text.lower().split():
            key, sep, value = term.partition(":")
            if sep and key == "op" and value:
                ops.append(value)
            elif sep and key in ("status", "is") and value:
                statuses = (statuses or set()) | set(_STATUS_WORDS.get(value, frozenset()))
            elif sep and key in ("id", "run") and value:
                ids.append(value)
            else:
                words.append(term)
        return cls(tuple(ops), None if statuses is None else frozenset(statuses), tuple(ids), tuple(words))

    @property
    def is_empty(self) -> bool:
        return not (self.ops or self.statuses is not None or self.id_prefixes or self.words)

    def matches(self, model: RunModel, now_millis: int) -> bool:
        op = (model.op_id or "").lower()
        if self.ops and not any(o in op for o in self.ops):
            return False
        if self.statuses is not None and model.status not in self.statuses:
            return False
        if self.id_prefixes and not any(model.run_id.startswith(p) for p in self.id_prefixes):
            return False
        if self.words:
            hay = " ".join((model.run_id, op, model.status.value, now_text(model, now_millis).lower()))
            return all(w in hay for w in self.words)
        return True


def order_models(models: Iterable[RunModel], sort: str, now_millis: int) -> list[RunModel]:
    """Runs in display order for a sort key (``urgency``: failed/lost/retrying first, newest first within)."""
    rows = list(models)

    def started(m: RunModel) -> int:
        return m.started_millis or 0

    if sort == "newest":
        rows.sort(key=lambda m: (-started(m), m.run_id))
    elif sort == "oldest":
        rows.sort(key=lambda m: (started(m), m.run_id))
    elif sort == "op":
        rows.sort(key=lambda m: (m.op_id or "", -started(m), m.run_id))
    elif sort == "duration":
        rows.sort(key=lambda m: (-(m.duration_millis(now_millis) or 0), m.run_id))
    else:
        rows.sort(key=lambda m: (m.load_error is None, m.urgency, -(m.started_millis or 0), m.run_id))
    return rows


def nest_children(
    rows: list[RunModel], models: Mapping[RunId, RunModel], collapsed: AbstractSet[RunId] = frozenset()
) -> tuple[list[RunModel], dict[RunId, RowTree]]:
    """Rows (in display order) as a run tree: each parent followed by its shown children in spawn order (none when
    it is collapsed). A child whose parent is not shown (another tab, the filter) stays a top-level row. A parent's
    ``RowTree`` carries the summary of all its children, shown or not."""
    shown = {m.run_id for m in rows}
    out: list[RunModel] = []
    tree: dict[RunId, RowTree] = {}
    for model in rows:
        if model.parent_run_id is not None and model.parent_run_id in shown:
            continue
        out.append(model)
        if not model.children:
            continue
        folded = model.run_id in collapsed
        tree[model.run_id] = RowTree(children=child_summary(model, models), collapsed=folded)
        if folded:
            continue
        kids = [models[c] for c in model.children if c in shown]
        for i, child in enumerate(kids):
            out.append(child)
            tree[child.run_id] = RowTree(depth=1, last=i == len(kids) - 1)
    return out, tree


class RunsScreen(Screen[None]):
    """Home: the runs list.

    It reads the watcher's models (passed down by the app), rebuilds on ``RunsUpdated``, opens a run through the
    table's ``RunSelected`` (the app handles it) and steers runs through ``mfm_tui.controller``.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "slash", "open_filter", "Filter", tooltip="Filter: op:NAME status:failed id:PREFIX words", id="runs.filter"
        ),
        Binding(
            "escape", "clear_filter", "Clear", show=False, tooltip="Clear the marks, then the filter, then the tab"
        ),
        Binding("tab", "step_tab(1)", "Tab", tooltip="Next status tab", id="runs.next_tab"),
        Binding("shift+tab", "step_tab(-1)", "Previous tab", show=False, tooltip="Previous status tab"),
        Binding("o", "cycle_sort", "Sort", tooltip="Sort by urgency, newest, oldest, op, duration", id="runs.sort"),
        Binding("s", "start_run", "Start", tooltip="Start a run", id="runs.start"),
        Binding(
            "w",
            "app.show_workers",
            "Workers",
            show=False,
            tooltip="Workers: live workers and their leases",
            id="runs.workers",
        ),
        Binding(
            "y", "copy_id", "Copy id", show=False, tooltip="Copy the selected run's id (OSC 52)", id="runs.copy_id"
        ),
        Binding(
            "space",
            "toggle_mark",
            "Mark",
            show=False,
            tooltip="Mark the run (bulk cancel, resume; diff two)",
            id="runs.mark",
        ),
        Binding(
            "v",
            "range_mark",
            "Range",
            show=False,
            tooltip="Mark a range: v at one end, v again at the other",
            id="runs.range_mark",
        ),
        Binding("u", "unmark_all", "Unmark all", show=False, tooltip="Unmark every run", id="runs.unmark_all"),
        Binding(
            "c",
            "cancel_runs",
            "Cancel",
            tooltip="Cancel the run, or the marked runs (confirmation first)",
            id="runs.cancel",
        ),
        Binding(
            "r",
            "resume_runs",
            "Resume",
            tooltip="Resume the run, or the marked runs (confirmation first)",
            id="runs.resume",
        ),
        Binding(
            "p",
            "replay_run",
            "Replay",
            tooltip="Replay the finished run and compare (deterministic?)",
            id="runs.replay",
        ),
        Binding(
            "d",
            "diff_runs",
            "Diff",
            show=False,
            tooltip="Diff two marked runs: final snapshots, manifests",
            id="runs.diff",
        ),
        Binding(
            "left,h", "collapse", "Collapse", show=False, tooltip="Fold a parent's child runs (or go to the parent)"
        ),
        Binding("right,l", "expand", "Expand", show=False, tooltip="Unfold a parent's child runs"),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | slash | Filter: `op:NAME status:failed id:PREFIX words`. |
    | escape | Clear the marks, then the filter, then the tab. |
    | tab, shift+tab | Next / previous status tab. |
    | o | Sort by urgency, newest, oldest, op, duration. |
    | s | Start a run. |
    | w | Workers: live workers and their leases. |
    | y | Copy the selected run's id. |
    | space | Mark the run (bulk cancel, resume; diff two). |
    | v | Mark a range: `v` at one end, `v` again at the other. |
    | u | Unmark every run. |
    | c | Cancel the run, or the marked runs (confirmation first). |
    | r | Resume the run, or the marked runs (confirmation first). |
    | p | Replay the finished run and compare. |
    | d | Diff two marked runs: final snapshots, manifests. |
    | left, h / right, l | Fold / unfold a parent's child runs (on a child: go to its parent). |
    """

    CONTROLS: ClassVar[frozenset[str]] = frozenset({"start_run", "cancel_runs", "resume_runs", "replay_run"})
    """Actions that write: disabled (dimmed, with a message when pressed) in read-only mode."""

    def __init__(
        self,
        models: Mapping[RunId, RunModel],
        clock: Clock,
        *,
        store_label: str = "",
        read_only: bool = False,
        glyphs: Glyphs = UNICODE,
    ) -> None:
        super().__init__()
        self.models = models
        self.clock = clock
        self.store_label = store_label
        self.read_only = read_only
        self.sort = "urgency"
        self.filter = RunFilter()
        self.filter_text = ""
        self.tab = "all"
        self.loaded = False
        self.store_error: tuple[str, str] | None = None
        self._rebuild_pending = False
        self._stale = False
        self._last_rebuild = 0.0
        self._rebuild_cost = 0.0
        self._rebuild_timer: Timer | None = None
        self._glyphs = glyphs
        self.marked: set[RunId] = set()
        self.collapsed: set[RunId] = set()
        """Parents whose child runs are folded away."""
        self._range_anchor: RunId | None = None

    def compose(self) -> ComposeResult:
        yield SizeNotice()
        yield Static(id="runs-summary")
        yield StatusTabs(id="runs-tabs")
        yield Welcome(read_only=self.read_only, id="runs-welcome")
        table = RunTable(self.clock, id="runs-table")
        table.set_glyphs(self._glyphs)
        yield table
        yield Input(placeholder="filter: op:NAME status:failed id:PREFIX words", id="runs-filter", compact=True)
        yield Static(id="runs-marks")
        yield KeyFooter()

    # ------------------------------------------------------------------ data to widgets

    def set_glyphs(self, glyphs: Glyphs) -> None:
        self._glyphs = glyphs
        for table in self.query(RunTable):
            table.set_glyphs(glyphs)

    def rebuild(self) -> None:
        """Recount, refilter and resort every run (cheap: 10,000 runs in a few ms)."""
        now = self.clock.now_millis()
        counts = Counter(m.status for m in self.models.values())
        tabs = self.query_one(StatusTabs)
        tabs.set_counts(counts)
        shown = [
            m
            for m in self.models.values()
            if tab_matches(self.tab, m.status) and (self.filter.is_empty or self.filter.matches(m, now))
        ]
        link_children(self.models)  # a child's stream does not name its parent: link them before nesting
        rows, tree = nest_children(order_models(shown, self.sort, now), self.models, self.collapsed)
        self.query_one(RunTable).set_rows(rows, keep_cursor=self.loaded, tree=tree)
        empty = self.loaded and not self.models and self.store_error is None
        self.query_one(Welcome).display = empty
        table = self.query_one(RunTable)
        if not table.display and not empty:
            table.display = True
            if self.focused is None:  # hidden behind the welcome, the table lost the focus: Enter opens a run again
                table.focus()
        table.display = not empty
        self._update_summary(counts, len(shown))
        self._draw_marks_bar()

    def tick(self) -> None:
        if self._shown:
            self.query_one(RunTable).tick()

    @property
    def _shown(self) -> bool:
        """On screen (or behind a dialog). Under another screen its repaints would still redraw the screen on top
        (Textual passes a lower screen's dirty regions up), once per appended event: it is rebuilt on resume."""
        top = self.app.screen
        return top is self or (isinstance(top, ModalScreen) and self.is_current)

    def on_screen_resume(self) -> None:
        if self._stale:
            self._stale = False
            self.rebuild()

    # ------------------------------------------------------------------ handlers

    def on_mount(self) -> None:
        self.query_one("#runs-filter", Input).display = False
        self.query_one("#runs-marks", Static).display = False
        self.rebuild()
        self.query_one(RunTable).focus()
        self.set_interval(1.0, self.tick)

    def on_resize(self, event: events.Resize) -> None:
        self.query_one(SizeNotice).check(event.size.width, event.size.height)

    def on_runs_updated(self, message: RunsUpdated) -> None:
        self.loaded = message.loaded
        self.store_error = message.store_error
        # Coalesce: a burst of updates already queued costs one rebuild; while a big store is still
        # loading, rebuild at most every LOADING_REBUILD_SECONDS (each rebuild sorts every run).
        if self._rebuild_timer is not None and self.loaded:
            self._rebuild_timer.stop()  # the load just finished: show the final order now
            self._rebuild_timer = None
            self._rebuild_pending = False
        if self._rebuild_pending:
            return
        self._rebuild_pending = True
        # (or ten times what the last rebuild took, so rebuilding stays under a tenth of the loop on any machine)
        interval = max(LOADING_REBUILD_SECONDS, 10 * self._rebuild_cost)
        wait = 0.0 if self.loaded else self._last_rebuild + interval - time.monotonic()
        if wait > 0:
            self._rebuild_timer = self.set_timer(wait, self._rebuild_now)
        else:
            self.call_later(self._rebuild_now)

    @on(StatusTabs.TabChanged)
    def _tab_changed(self, message: StatusTabs.TabChanged) -> None:
        self.tab = message.tab
        self.rebuild()

    @on(Input.Changed, "#runs-filter")
    def _filter_changed(self, message: Input.Changed) -> None:
        self.filter_text = message.value
        self.filter = RunFilter.parse(message.value)
        self.rebuild()

    @on(Input.Submitted, "#runs-filter")
    def _filter_submitted(self, message: Input.Submitted) -> None:
        self.query_one(RunTable).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.read_only and action in self.CONTROLS:
            return None  # shown disabled; pressing the key says why (on_key)
        return True

    def on_key(self, event: events.Key) -> None:
        if self.read_only and event.key in ("s", "c", "r", "p"):
            event.stop()
            self.notify(
                controller.read_only_reason(services_of(self.app)) or "read-only", severity="warning", timeout=4
            )

    # ------------------------------------------------------------------ actions

    def action_open_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        if self.marked or self._range_anchor is not None:
            self.clear_marks()
        elif box.display or box.value:
            box.value = ""
            box.display = False
            self.query_one(RunTable).focus()
        elif self.tab != "all":
            self.query_one(StatusTabs).select("all")

    def action_step_tab(self, delta: int) -> None:
        self.query_one(StatusTabs).step(delta)

    def action_cycle_sort(self) -> None:
        self.sort = SORT_KEYS[(SORT_KEYS.index(self.sort) + 1) % len(SORT_KEYS)]
        self.rebuild()
        self.notify(f"sorted by {self.sort}", timeout=2)

    def action_copy_id(self) -> None:
        run_id = self.query_one(RunTable).cursor_run_id
        if run_id is not None:
            copy_text(self.app, str(run_id), f"run id {run_id[:8]}")

    def action_start_run(self) -> None:
        if self.read_only:
            self.notify("read-only: starting runs is disabled", severity="warning", timeout=3)
            return
        self.app.push_screen(screens.StartScreen())

    def action_toggle_mark(self) -> None:
        table = self.query_one(RunTable)
        run_id = table.cursor_run_id
        if run_id is None:
            return
        self.marked.symmetric_difference_update({run_id})
        self._range_anchor = None
        self._show_marks()
        table.action_cursor_down()

    def action_range_mark(self) -> None:
        """``v`` starts a range at the cursor; ``v`` again marks every shown run from there to the cursor."""
        table = self.query_one(RunTable)
        run_id = table.cursor_run_id
        if run_id is None:
            return
        rows = [m.run_id for m in table.rows]
        if self._range_anchor is None or self._range_anchor not in rows:
            self._range_anchor = run_id
            self.marked.add(run_id)
        else:
            a, b = sorted((rows.index(self._range_anchor), table.cursor_row))
            self.marked.update(rows[a : b + 1])
            self._range_anchor = None
        self._show_marks()

    def action_unmark_all(self) -> None:
        self.clear_marks()

    def clear_marks(self, run_ids: Iterable[RunId] | None = None) -> None:
        """Unmark ``run_ids`` (all when ``None``): after a bulk action ran, with ``esc`` and ``u``."""
        if run_ids is None:
            self.marked.clear()
        else:
            self.marked.difference_update(run_ids)
        self._range_anchor = None
        self._show_marks()

    def action_cancel_runs(self) -> None:
        controller.cancel_runs(services_of(self.app), self._targets())

    def action_resume_runs(self) -> None:
        controller.resume_runs(services_of(self.app), self._targets())

    def action_replay_run(self) -> None:
        controller.replay_run_of(services_of(self.app), self.query_one(RunTable).cursor_run_id)

    def action_diff_runs(self) -> None:
        marked = [self.models[r] for r in sorted(self.marked) if r in self.models]
        if len(marked) != 2:
            self.notify("mark two runs with space, then d diffs them", timeout=3)
            return
        controller.diff_runs(services_of(self.app), marked[0], marked[1])

    def action_collapse(self) -> None:
        table = self.query_one(RunTable)
        model = self.models.get(table.cursor_run_id) if table.cursor_run_id is not None else None
        if model is None:
            return
        if model.children and model.run_id not in self.collapsed:
            self.collapsed.add(model.run_id)
            self.rebuild()
        elif model.parent_run_id is not None:
            row = table.row_of(model.parent_run_id)
            if row is not None:
                table.cursor_row = row

    def action_expand(self) -> None:
        table = self.query_one(RunTable)
        run_id = table.cursor_run_id
        if run_id is not None and run_id in self.collapsed:
            self.collapsed.discard(run_id)
            self.rebuild()

    # ------------------------------------------------------------------ internals

    def _update_summary(self, counts: Counter[RunDisplayStatus], shown: int) -> None:
        total = sum(counts.values())
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("mfm", style="bold")
        if self.store_label:
            text.append(f"  store {self.store_label}")
        if self.store_error is not None:
            text.append(f"  [{self.store_error[0]}] {self.store_error[1]}", style="bold")
        elif not self.loaded:
            text.append("  loading" + self._glyphs.ellipsis)
        else:
            narrowed = self.tab != "all" or not self.filter.is_empty
            text.append(f"  {shown} of {total}" if narrowed else f"  {total}")
            text.append(" run" if total == 1 else " runs")
            if self.sort != "urgency":
                text.append(f"  sort {self.sort}")
            if self.marked:
                text.append(f"  {len(self.marked)} marked", style="bold")
            if self.read_only:
                text.append("  read-only", style="bold")
            recovered = sum(
                1 for m in self.models.values() if m.recovered_by is not None and m.status is RunDisplayStatus.FAILED
            )
            counts = counts.copy()
            counts[RunDisplayStatus.FAILED] -= recovered  # recovered: its recovery run carries on
            broken = Counter(
                "damaged" if m.load_error[0] == "run_log_corrupt" else "unreadable"
                for m in self.models.values()
                if m.load_error is not None
            )
            for m in self.models.values():
                if m.load_error is not None:  # not counted as what its readable prefix looks like (running…)
                    counts[m.status] -= 1
            for word in ("damaged", "unreadable"):  # first: the narrowest terminal still shows them
                if broken[word]:
                    text.append(f"  {broken[word]} {word}", style="bold")
            for status, word in (
                (RunDisplayStatus.RUNNING, "running"),
                (RunDisplayStatus.RETRYING, "retrying"),
                (RunDisplayStatus.FAILED, "failed"),
                (RunDisplayStatus.WORKER_LOST, "lost"),
                (RunDisplayStatus.CRASH_LOOPING, "crash-looping"),
                (RunDisplayStatus.NOT_STARTED, "not started"),
            ):
                if counts.get(status):
                    text.append(f"  {counts[status]} {word}")
            if recovered:
                text.append(f"  {recovered} recovered")
        update_changed(self.query_one("#runs-summary", Static), text)  # a reflow only when the text changes

    def _show_marks(self) -> None:
        """Draw the marks in the table, their count in the summary and the marks bar."""
        if not self.is_mounted:
            return
        table = self.query_one(RunTable)
        table.marked = frozenset(self.marked)
        table.refresh()
        self._draw_marks_bar()
        self._update_summary(Counter(m.status for m in self.models.values()), len(table.rows))

    def _draw_marks_bar(self) -> None:
        """The mark count (and how many of them the tab or filter hides) with what marks do, above the footer."""
        table = self.query_one(RunTable)
        bar = self.query_one("#runs-marks", Static)
        n = len(self.marked)
        hidden = len(self.marked - {m.run_id for m in table.rows})
        if n or self._range_anchor is not None:
            text = f" {n} marked" + (f" ({hidden} not shown)" if hidden else "")
            if self._range_anchor is not None:
                text += "  range: move, v again"
            text += "  c cancel  r resume  d diff two  u/esc unmark"
            bar.update(Text(text, style="bold"))
        bar.display = bool(n) or self._range_anchor is not None

    def _rebuild_now(self) -> None:
        self._rebuild_pending = False
        self._rebuild_timer = None
        if not self._shown:  # under a run screen: rebuilt when shown again (see ``_shown``)
            self._stale = True
            return
        self._last_rebuild = time.monotonic()
        self.rebuild()
        self._rebuild_cost = time.monotonic() - self._last_rebuild

    def _targets(self) -> list[RunId]:
        """The marked runs (still present), else the run under the cursor."""
        marked = [r for r in self.marked if r in self.models]
        if marked:
            return sorted(marked)
        run_id = self.query_one(RunTable).cursor_run_id
        return [run_id] if run_id is not None else []
