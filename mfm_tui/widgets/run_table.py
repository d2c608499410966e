"""The runs list: one line per run, drawn with the Line API so 10,000 runs paint as fast as 10.

Only the visible lines are rendered. The header line stays put while the rows scroll. The cursor
follows its *run*, not its row number: when new runs arrive above it, the view shifts with it so
nothing jumps under the cursor. Row order and filtering are the screen's (``order_models``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.events import Click
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from engine import Clock
from engine.ids import RunId
from mfm_tui.glyphs import UNICODE, Glyphs, status_class
from mfm_tui.messages import RunSelected
from mfm_tui.run_model import ChildSummary, RunDisplayStatus, RunModel
from mfm_tui.time_format import format_ago, format_countdown, format_duration

__all__ = ["FULL_TICKS", "Columns", "RowTree", "RunTable", "columns_for", "now_text"]

FULL_TICKS = 15
"""Every 15th tick repaints every visible row; the others only the unfinished ones."""


@dataclass(frozen=True, slots=True)
class RowTree:
    """A row's place in the run tree (child runs, ENGINE-SPEC §16): a child is drawn indented under its parent;
    a parent shows whether it is expanded, how many children it has and the worst child status."""

    depth: int = 0
    last: bool = False
    """The last child of its parent (drawn with a corner instead of a tee)."""
    children: ChildSummary | None = None
    collapsed: bool = False


def children_text(tree: RowTree, glyphs: Glyphs) -> str:
    """``▾3 ✗ failed`` (expanded, worst child failed), ``▸2 ✓`` (collapsed, all completed); empty for no children."""
    summary = tree.children
    if summary is None or not summary.total:
        return ""
    marker = (">" if tree.collapsed else "v") if glyphs.ascii else ("▸" if tree.collapsed else "▾")
    worst = summary.worst
    if worst is None or worst is RunDisplayStatus.COMPLETED:
        return f"{marker}{summary.total} {glyphs.run[RunDisplayStatus.COMPLETED]}"
    return f"{marker}{summary.total} {glyphs.run[worst]} {worst.label}"


def _fit(text: str, width: int, ellipsis: str) -> str:
    """Pad or cut ``text`` to exactly ``width`` cells, marking a cut with ``ellipsis``."""
    if width <= 0:
        return ""
    if cell_len(text) <= width:
        return set_cell_size(text, width)
    if width <= len(ellipsis):
        return set_cell_size(text, width)
    return set_cell_size(text, width - len(ellipsis)) + ellipsis


@dataclass(frozen=True, slots=True)
class Columns:
    """Widths of the columns that give way (0: hidden); ST and RUN always show."""

    op: int
    started: int
    took: int
    now: int
    done: int


_BASE = 4 + 9 + 1
"""Mark, glyph and gap; the run id and its gap; the gap after NOW."""
NOW_MIN = 20
"""NOW (what the run does, or its error) keeps at least this many cells while other columns give way."""
_NOW_COMFORT = 24
_OP_MIN = 10


def columns_for(width: int) -> Columns:
    """The columns for ``width`` cells, by importance: NOW (the error) first, then DONE, OP, TOOK, STARTED.

    Less important columns drop out whole (never cut to "DO"); NOW grows to a comfortable width before OP grows
    to its ideal (16, or 22 from 100 cells), and NOW takes whatever is left.
    """
    room = width - _BASE - NOW_MIN
    shown: dict[str, int] = {}
    for name, need in (("done", 8), ("op", _OP_MIN + 1), ("took", 7), ("started", 9)):
        if need <= room:
            shown[name] = need
            room -= need
    now = NOW_MIN + max(0, min(room, _NOW_COMFORT - NOW_MIN))
    room -= now - NOW_MIN
    op = 0
    if "op" in shown:
        ideal = 16 if width < 100 else 22
        op = _OP_MIN + max(0, min(room, ideal - _OP_MIN))
        room -= op - _OP_MIN
    now += max(0, room)
    if room < 0:  # narrower than the minimum: NOW takes what is left
        now = max(1, width - _BASE)
    started, took, done = shown.get("started", 0), shown.get("took", 0), shown.get("done", 0)
    return Columns(op=op, started=started, took=took, now=now, done=done)


def now_text(model: RunModel, now_millis: int) -> str:
    """What the run is doing right now, in a few words (the NOW column); a replay says whose."""
    text = _now_text(model, now_millis)
    if model.replay_of is not None and model.load_error is None:
        return f"replay of {model.replay_of[:8]}" + (f": {text}" if text else "")
    return text


def _now_text(model: RunModel, now_millis: int) -> str:
    if model.load_error is not None:
        return f"[{model.load_error[0]}] {model.load_error[1]}"
    status = model.status
    current = model.current_state
    name = current.short_name if current is not None else ""
    if status is RunDisplayStatus.FAILED:
        if model.recovered_by is not None:
            return f"recovered as {model.recovered_by[:8]}"
        err = model.error
        return f"{name} [{err[0]}]" if err is not None else name or "failed"
    if status is RunDisplayStatus.RETRYING:
        target = model.retry_target
        if target is not None:
            due = format_countdown(target.not_before_millis, now_millis) or "retrying"
            return f"{target.state.short_name} {target.state.attempt_label} {due}"
    if status is RunDisplayStatus.WORKER_LOST:
        return f"worker lost at {name}" if name else "worker lost"
    if status is RunDisplayStatus.CRASH_LOOPING:
        loop = model.crash_loop
        return f"{model.status_label}, {loop.recoveries} in a row" if loop is not None else model.status_label
    if status is RunDisplayStatus.NOT_STARTED:
        return "not started: worker lost"
    if status is RunDisplayStatus.CANCELLING:
        return f"cancelling at {name}" if name else "cancelling"
    if status is RunDisplayStatus.CANCELLED:
        cancelled = model.cancelled_state
        return f"cancelled at {cancelled.short_name}" if cancelled is not None else "cancelled"
    if status is RunDisplayStatus.PENDING or status is RunDisplayStatus.STARTING:
        return "starting"
    if status is RunDisplayStatus.COMPLETED:
        return ""
    running = model.open_states
    if len(running) > 1:
        return f"{running[-1].short_name} +{len(running) - 1} more"
    if current is not None and current.attempt_number > 1:
        return f"{name} {current.attempt_label}"
    return name


class RunTable(ScrollView, can_focus=True, inherit_bindings=False):
    """Runs, one per line (``set_rows``, in the screen's order); ``enter`` posts ``RunSelected``."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select", "Open", tooltip="Open the selected run"),
        Binding("down,j", "cursor_down", "Down", show=False, tooltip="Next run"),
        Binding("up,k", "cursor_up", "Up", show=False, tooltip="Previous run"),
        Binding("home,g", "cursor_top", "Top", show=False, tooltip="First run"),
        Binding("end,G", "cursor_bottom", "Bottom", show=False, tooltip="Last run"),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | enter | Open the selected run (posts `RunSelected`). |
    | down, j / up, k | Next / previous run. |
    | home, g / end, G | First / last run. |
    | pagedown, pageup | A page down / up. |
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "run-table--header",
        "run-table--cursor",
        "run-table--success",
        "run-table--error",
        "run-table--warning",
        "run-table--running",
        "run-table--muted",
        "run-table--id",
        "run-table--new",
    }
    """
    | Class | Description |
    | :- | :- |
    | `run-table--header` | The header line. |
    | `run-table--cursor` | The line under the cursor. |
    | `run-table--success`, `--error`, `--warning`, `--running`, `--muted` | A run's status colour role. |
    | `run-table--id` | The run id column. |
    | `run-table--new` | The "N new above" marker in the header line. |
    """

    DEFAULT_CSS = """
    RunTable {
        height: 1fr;
        background: $background;
        scrollbar-gutter: stable;
        scrollbar-size-vertical: 1;  /* the gutter is always there: one cell of 80, not two */
        overflow-x: hidden;
        & > .run-table--header { text-style: bold; color: $text-muted; }
        & > .run-table--cursor { background: $block-cursor-blurred-background; }
        &:focus > .run-table--cursor {
            color: $block-cursor-foreground;
            background: $block-cursor-background;
            text-style: $block-cursor-text-style;
        }
        & > .run-table--success { color: $success; }
        & > .run-table--error { color: $error; text-style: bold; }
        & > .run-table--warning { color: $warning; }
        & > .run-table--running { color: $primary; }
        & > .run-table--muted { color: $text-muted; }
        & > .run-table--id { color: $text-muted; }
        & > .run-table--new { color: $warning; text-style: bold reverse; }
    }
    """

    cursor_row: reactive[int] = reactive(0, always_update=True)
    """The row under the cursor (the cursor follows its run when rows change)."""

    def __init__(self, clock: Clock, *, name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self._clock = clock
        self._rows: list[RunModel] = []
        self._index: dict[RunId, int] = {}
        self._tree: Mapping[RunId, RowTree] = {}
        self._glyphs: Glyphs = UNICODE
        self._ticks = 0
        self.marked: AbstractSet[RunId] = frozenset()
        """Runs marked for a bulk action (drawn with a mark in the first column)."""
        self._new_ids: set[RunId] = set()
        """Runs that arrived above the view and were not seen yet (the header's "N new above")."""

    # ------------------------------------------------------------------ data

    @property
    def rows(self) -> Sequence[RunModel]:
        return self._rows

    @property
    def cursor_run_id(self) -> RunId | None:
        if 0 <= self.cursor_row < len(self._rows):
            return self._rows[self.cursor_row].run_id
        return None

    def row_of(self, run_id: RunId) -> int | None:
        """The row showing ``run_id``, if shown."""
        return self._index.get(run_id)

    def set_glyphs(self, glyphs: Glyphs) -> None:
        self._glyphs = glyphs
        if self.is_mounted:
            self.refresh()

    def set_rows(
        self, rows: Sequence[RunModel], *, keep_cursor: bool = True, tree: Mapping[RunId, RowTree] | None = None
    ) -> None:
        """Replace the rows, keeping the cursor on the same run (and that run at the same height).

        ``keep_cursor=False`` (while the first load streams in) leaves the cursor on the same row. ``tree``: the
        rows' places in the run tree (rows not in it are top-level runs without children).
        """
        keep = self.cursor_run_id if keep_cursor else None
        old_row = self.cursor_row
        self._tree = tree or {}
        old_top = int(self.scroll_y)
        old_ids = self._index
        self._rows = list(rows)
        self._index = {m.run_id: i for i, m in enumerate(self._rows)}
        self.virtual_size = Size(0, len(self._rows) + 1)  # the columns fit the width: no sideways scroll
        fallback = min(old_row, len(self._rows) - 1)
        new_row = self._index.get(keep, fallback) if keep is not None else fallback
        new_row = max(0, new_row)
        if new_row != old_row:
            visible = max(1, self.size.height - 1)
            # the view was at the top: it stays there, so new rows above show
            top = 0 if old_top == 0 and new_row < visible else max(0, old_top + new_row - old_row)
            self.scroll_to(y=top, animate=False, immediate=True)
        self.cursor_row = new_row
        if keep_cursor and old_ids:
            self._new_ids |= {r for r in self._index if r not in old_ids}
        self._forget_seen()
        self.refresh()

    @property
    def new_above(self) -> int:
        """How many runs arrived above the view since the user last saw the top (0 when none)."""
        top = int(self.scroll_y)
        return sum(1 for r in self._new_ids if self._index.get(r, top) < top)

    def _forget_seen(self) -> None:
        top = int(self.scroll_y)
        self._new_ids = {r for r in self._new_ids if self._index.get(r, top) < top}

    def refresh_rows(self, run_ids: set[RunId] | frozenset[RunId]) -> None:
        """Repaint the lines of these runs if they are on screen."""
        top = int(self.scroll_y)
        for run_id in run_ids:
            i = self._index.get(run_id)
            if i is not None and top <= i < top + self.size.height:
                self.refresh_line(i - top + 1)

    def tick(self) -> None:
        """Once a second: repaint the visible unfinished runs (durations, countdowns); every
        ``FULL_TICKS`` ticks repaint everything (the coarse "3m ago" of finished runs)."""
        self._ticks += 1
        if self._ticks % FULL_TICKS == 0:
            self.refresh()
            return
        top = int(self.scroll_y)
        for y, model in enumerate(self._rows[top : top + max(0, self.size.height - 1)], start=1):
            if not model.status.is_finished:
                self.refresh_line(y)

    # ------------------------------------------------------------------ rendering

    def _columns(self, width: int) -> Columns:
        """Column widths for this width, giving way by importance (0: the column is hidden)."""
        return columns_for(width)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width  # not under the vertical scrollbar (gutter: stable)
        if y == 0:
            return self._header(width)
        index = int(self.scroll_y) + y - 1
        if index >= len(self._rows):
            return Strip.blank(width, self.rich_style)
        try:
            return self._row(self._rows[index], width, index == self.cursor_row)
        except Exception as exc:  # one bad run must not take the list down
            text = f" [render_error] {type(exc).__name__}: {exc}"
            return Strip([Segment(_fit(text, width, self._glyphs.ellipsis), self.rich_style)], width)

    def _header(self, width: int) -> Strip:
        cols = self._columns(width)
        text = " ST " + _fit("RUN", 9, "")
        if cols.op:
            text += _fit("OP", cols.op + 1, "")
        if cols.started:
            text += _fit("STARTED", 9, "")
        if cols.took:
            text += _fit("TOOK", 7, "")
        text += _fit("NOW", cols.now + 1, "")
        if cols.done:
            text += "DONE".rjust(cols.done)
        style = self.rich_style + self.get_component_rich_style("run-table--header")
        text = _fit(text, width, "")
        if self.new_above:
            g = self._glyphs
            note = f" {'^' if g.ascii else '▲'} {self.new_above} new above (g: top) "
            keep = max(0, width - cell_len(note))
            new_style = self.rich_style + self.get_component_rich_style("run-table--new")
            return Strip([Segment(text[:keep], style), Segment(_fit(note, width - keep, ""), new_style)], width)
        return Strip([Segment(text, style)], width)

    def _row(self, model: RunModel, width: int, is_cursor: bool) -> Strip:
        g = self._glyphs
        now_ms = self._clock.now_millis()
        cols = self._columns(width)
        status = model.status
        base = self.rich_style
        if is_cursor:
            base = base + self.get_component_rich_style("run-table--cursor")
        role = "error" if model.load_error is not None else status_class(status)
        role_style = self.get_component_rich_style(f"run-table--{role}")
        # On the cursor line the cursor's colours win (the glyph still tells the status).
        role_style = Style(bold=role_style.bold) if is_cursor else Style(color=role_style.color, bold=role_style.bold)
        id_style = Style(color=self.get_component_rich_style("run-table--id").color)
        glyph = g.run[status] if model.load_error is None else "?"
        done = f"{model.done}/{model.total}" if model.total and not model.indexing else ""
        now_txt = "indexing" + g.ellipsis if model.indexing else now_text(model, now_ms)
        urgent = model.recovered_by is None and (
            status
            in (
                RunDisplayStatus.FAILED,
                RunDisplayStatus.RETRYING,
                RunDisplayStatus.WORKER_LOST,
                RunDisplayStatus.NOT_STARTED,
                RunDisplayStatus.CRASH_LOOPING,
            )
            or model.load_error
        )
        mark = (">" if g.ascii else "▶") if model.run_id in self.marked else " "
        tree = self._tree.get(model.run_id)
        op_text = model.op_id or g.dash
        if tree is not None and tree.depth:
            op_text = f"{g.corner_bottom_left if tree.last else g.tee_right} {op_text}"
        elif tree is not None and tree.children is not None:
            now_txt = f"{children_text(tree, g)}  {now_txt}".rstrip()
        segments = [
            Segment(mark, base + Style(bold=True)),
            Segment(_fit(glyph, 2, ""), base + role_style),
            Segment(" ", base),
            Segment(_fit(model.short_id, 9, ""), base if is_cursor else base + id_style),
        ]
        if cols.op:
            segments.append(Segment(_fit(op_text, cols.op, g.ellipsis) + " ", base))
        if cols.started:
            segments.append(Segment(_fit(format_ago(model.started_millis, now_ms), 9, g.ellipsis), base))
        if cols.took:
            segments.append(Segment(_fit(format_duration(model.duration_millis(now_ms)), 7, ""), base))
        segments.append(Segment(_fit(now_txt, cols.now, g.ellipsis) + " ", base + role_style if urgent else base))
        if cols.done:
            segments.append(Segment(done.rjust(cols.done)[-cols.done :], base))
        strip = Strip(segments)
        return strip.adjust_cell_length(width, base)

    # ------------------------------------------------------------------ handlers

    def watch_cursor_row(self, old: int, new: int) -> None:
        self.refresh()
        self._scroll_cursor_into_view()

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if self._new_ids:
            self._forget_seen()
            self.refresh_line(0)

    def _scroll_cursor_into_view(self) -> None:
        visible = max(1, self.size.height - 1)
        top = int(self.scroll_y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, immediate=True)
        elif self.cursor_row >= top + visible:
            self.scroll_to(y=self.cursor_row - visible + 1, animate=False, immediate=True)

    def on_resize(self) -> None:
        self.virtual_size = Size(0, len(self._rows) + 1)  # the columns fit the width: no sideways scroll

    def on_click(self, event: Click) -> None:
        if event.y <= 0:
            return
        index = int(self.scroll_y) + event.y - 1
        if 0 <= index < len(self._rows):
            if index == self.cursor_row and event.chain >= 2:
                self.action_select()
            self.cursor_row = index

    # ------------------------------------------------------------------ actions

    def _move(self, delta: int) -> None:
        if self._rows:
            self.cursor_row = max(0, min(len(self._rows) - 1, self.cursor_row + delta))

    def action_cursor_down(self) -> None:
        self._move(1)

    def action_cursor_up(self) -> None:
        self._move(-1)

    def action_cursor_top(self) -> None:
        self._move(-len(self._rows))

    def action_cursor_bottom(self) -> None:
        self._move(len(self._rows))

    def action_page_down(self) -> None:
        self._move(max(1, self.size.height - 2))

    def action_page_up(self) -> None:
        self._move(-max(1, self.size.height - 2))

    def action_select(self) -> None:
        run_id = self.cursor_run_id
        if run_id is not None:
            self.post_message(RunSelected(run_id))
