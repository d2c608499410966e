"""The run's plan drawn as a live DAG: one node per state with its status glyph, name and attempt/countdown.

(Named ``PlanGraph``: ``engine.plan.StateGraph`` is the seed's type for the plan's states and edges.)

A Line-API ``ScrollView``: the layout (``mfm_tui.graph_layout``) is recomputed only when the set of states or the
expanded layers change; labels are re-rendered on every update (a countdown ticks once a second), and only the visible
rows are turned into strips, so a plan of 1,000 states scrolls like a small one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from mfm_tui.glyphs import status_glyph
from mfm_tui.graph_layout import (
    MORE_PREFIX,
    Direction,
    GraphLayout,
    GraphPicture,
    layout_graph,
    neighbour,
    render_graph,
)
from mfm_tui.run_model import StateStatus, StateView
from mfm_tui.time_format import countdown_text

__all__ = ["PlanGraph", "node_label"]


def node_label(sv: StateView, now_millis: int, *, ascii_only: bool = False) -> str:
    """``↻ call 2/5 in 7s``, ``✗ check needs_file``, ``» apply skipped``, ``✓ fetch``."""
    glyph = status_glyph(sv.status, ascii_only=ascii_only)
    name = sv.short_name
    st = sv.status
    if st is StateStatus.RETRYING:
        remaining = None if sv.not_before_millis is None else max(0, sv.not_before_millis - now_millis)
        due = countdown_text(remaining)
        return f"{glyph} {name} {sv.attempt_label}" + (f" in {due}" if due else "")
    if st is StateStatus.RUNNING:
        return f"{glyph} {name} {sv.attempt_label}"
    if st is StateStatus.FAILED:
        err = sv.error
        return f"{glyph} {name} {err[0]}" if err and err[0] else f"{glyph} {name}"
    if st is StateStatus.SKIPPED:
        return f"{glyph} {name} skipped"
    if st is StateStatus.CANCELLED:
        return f"{glyph} {name} cancelled"
    if st is StateStatus.COMPLETED and sv.attempt_number > 1:
        return f"{glyph} {name} {sv.attempt_label}"
    return f"{glyph} {name}"


class PlanGraph(ScrollView, can_focus=True):
    """The plan's DAG, left to right by topological depth; arrows move, ``enter`` selects.

    ``set_graph(nodes, edges, states, now)`` gives it the plan and the states' views; ``tick(now)`` relabels for a
    new time (countdowns). The cursor's moves post ``StateHighlighted``, ``enter`` posts ``StateSelected`` (on a
    "… N more" node it expands that layer instead).
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left,h", "move('left')", "Prev state", show=False, tooltip="Graph: to a predecessor"),
        Binding("right,l", "move('right')", "Next state", show=False, tooltip="Graph: to a successor"),
        Binding("up,k", "move('up')", "State above", show=False, tooltip="Graph: the state above in this layer"),
        Binding("down,j", "move('down')", "State below", show=False, tooltip="Graph: the state below in this layer"),
        Binding("enter", "select", "Select state", tooltip="Open the state's details / expand '… N more'"),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | left, h | Move to a predecessor. |
    | right, l | Move to a successor. |
    | up, k | Move to the state above in this layer. |
    | down, j | Move to the state below in this layer. |
    | enter | Select the state (its details), or expand a "… N more" node. |

    A move by the user stops following the active state (``following``); ``follow(state_id)`` moves the cursor
    only while following.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "plan-graph--edge",
        "plan-graph--more",
        "plan-graph--cursor",
        *(f"plan-graph--{s.value}" for s in StateStatus),
    }
    """
    | Class | Description |
    | :- | :- |
    | `plan-graph--edge` | The edges between states. |
    | `plan-graph--more` | A "… N more" node (a layer cut short). |
    | `plan-graph--cursor` | The state under the cursor. |
    | `plan-graph--<status>` | A state by status: pending, running, retrying, completed, failed, skipped, cancelled. |
    """

    DEFAULT_CSS = """
    PlanGraph {
        background: $surface;
        scrollbar-size: 1 1;
    }
    PlanGraph > .plan-graph--edge { color: $text-muted; }
    PlanGraph > .plan-graph--pending { color: $text-muted; }
    PlanGraph > .plan-graph--running { color: $accent; text-style: bold; }
    PlanGraph > .plan-graph--retrying { color: $warning; text-style: bold; }
    PlanGraph > .plan-graph--completed { color: $success; }
    PlanGraph > .plan-graph--failed { color: $error; text-style: bold; }
    PlanGraph > .plan-graph--skipped { color: $text-muted; text-style: italic; }
    PlanGraph > .plan-graph--cancelled { color: $warning; }
    PlanGraph > .plan-graph--more { color: $text-muted; text-style: italic; }
    PlanGraph > .plan-graph--cursor { text-style: reverse; }
    """

    ascii_only: reactive[bool] = reactive(False)
    """Draw with ASCII only (the ``mfm-ascii`` theme): glyphs, edges and labels."""

    class StateHighlighted(Message):
        """The cursor moved to a state."""

        def __init__(self, graph: PlanGraph, state_id: str) -> None:
            super().__init__()
            self.graph = graph
            self.state_id = state_id

        @property
        def control(self) -> PlanGraph:
            """The graph the cursor moved in."""
            return self.graph

    class StateSelected(Message):
        """``enter`` on a state."""

        def __init__(self, graph: PlanGraph, state_id: str) -> None:
            super().__init__()
            self.graph = graph
            self.state_id = state_id

        @property
        def control(self) -> PlanGraph:
            """The graph the state was selected in."""
            return self.graph

    def __init__(
        self, *, max_rows: int = 12, name: str | None = None, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.max_rows = max_rows
        self._g_nodes: tuple[str, ...] = ()
        self._g_edges: tuple[tuple[str, str], ...] = ()
        self._states: Mapping[str, StateView] = {}
        self._badges: dict[str, str] = {}
        self._g_expanded: set[int] = set()
        self._now = 0
        self._layout: GraphLayout | None = None
        self._picture: GraphPicture | None = None
        self.cursor: str | None = None
        self.following = True
        """Whether the cursor follows the run's active state (``follow``); a move by the user turns it off."""

    # ------------------------------------------------------------------ data in

    def set_graph(
        self,
        nodes: Sequence[str],
        edges: Sequence[tuple[str, str]],
        states: Mapping[str, StateView],
        now_millis: int,
        badges: Mapping[str, str] | None = None,
    ) -> None:
        """New data: re-layout if the shape changed, relabel always. ``badges``: a short text after a state's label
        (the child runs it spawned, ``3 children: 2 ✓ 1 ✗``)."""
        shape_changed = tuple(nodes) != self._g_nodes or tuple(edges) != self._g_edges
        self._g_nodes, self._g_edges = tuple(nodes), tuple(edges)
        self._states = states
        self._badges = dict(badges or {})
        self._now = now_millis
        if shape_changed or self._layout is None:
            self._relayout()
            self._repaint()
            self.call_after_refresh(self._scroll_to_cursor)
        else:
            self._repaint()

    def tick(self, now_millis: int) -> None:
        """Re-label for a new time (countdowns) without touching the layout."""
        self._now = now_millis
        self._repaint()

    def select(self, state_id: str) -> None:
        """Move the cursor to ``state_id`` (if it is drawn) and scroll it into view."""
        if self._layout is None or state_id not in self._layout.layer_of:
            return
        self.cursor = state_id
        self._scroll_to_cursor()
        self.refresh()
        self.post_message(self.StateHighlighted(self, state_id))

    def follow(self, state_id: str | None) -> None:
        """The run's active state is ``state_id``: move there (and into view) while following."""
        if self.following and state_id is not None and state_id != self.cursor:
            self.select(state_id)

    # ------------------------------------------------------------------ rendering

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self.rich_style
        pic = self._picture
        row = scroll_y + y
        if pic is None or row >= len(pic.rows):
            return Strip.blank(width, base)
        edge = self.get_component_rich_style("plan-graph--edge")
        cursor = self.get_component_rich_style("plan-graph--cursor")
        segments: list[Segment] = []
        for span in pic.rows[row]:
            if span.kind == "edge":
                style: Style = base + edge
            elif span.kind == "more":
                style = base + self.get_component_rich_style("plan-graph--more")
            elif span.kind == "node" and span.node is not None:
                sv = self._states.get(span.node)
                status = sv.status.value if sv is not None else StateStatus.PENDING.value
                style = base + self.get_component_rich_style(f"plan-graph--{status}")
            else:
                style = base
            if span.node is not None and span.node == self.cursor:
                style = style + cursor
            segments.append(Segment(span.text, style))
        strip = Strip(segments).crop_extend(scroll_x, scroll_x + width, base)
        return strip.apply_offsets(scroll_x, row)

    # ------------------------------------------------------------------ watchers and handlers

    def watch_ascii_only(self) -> None:
        self._repaint()

    def on_click(self, event: events.Click) -> None:
        if self._picture is None:
            return
        x, y = self.scroll_offset.x + event.x, self.scroll_offset.y + event.y
        for node, (row, x0, x1) in self._picture.boxes.items():
            if row == y and x0 <= x < x1:
                self.following = False
                self.select(node)
                if event.chain == 2:
                    self.action_select()
                return

    # ------------------------------------------------------------------ actions

    def action_move(self, direction: str) -> None:
        if self._layout is None or self.cursor is None:
            return
        target = neighbour(self._layout, self.cursor, Direction(direction))
        if target is not None:
            self.following = False
            self.select(target)

    def action_select(self) -> None:
        if self.cursor is None or self._layout is None:
            return
        if self.cursor.startswith(MORE_PREFIX):
            layer = int(self.cursor[len(MORE_PREFIX) :])
            self._g_expanded.add(layer)
            keep = self._layout.layers[layer][-2] if len(self._layout.layers[layer]) > 1 else None
            self.cursor = keep
            self._relayout()
            self._repaint()
            if keep is not None:
                self.select(keep)
            return
        self.post_message(self.StateSelected(self, self.cursor))

    # ------------------------------------------------------------------ layout

    def _relayout(self) -> None:
        self._layout = layout_graph(self._g_nodes, self._g_edges, max_rows=self.max_rows, expanded=self._g_expanded)
        if self.cursor not in self._layout.layer_of:
            self.cursor = self._default_cursor()

    def _default_cursor(self) -> str | None:
        assert self._layout is not None
        real = self._layout.real_nodes()
        for status in (StateStatus.FAILED, StateStatus.RETRYING, StateStatus.RUNNING, StateStatus.CANCELLED):
            for n in real:
                sv = self._states.get(n)
                if sv is not None and sv.status is status:
                    return n
        return real[0] if real else None

    def _repaint(self) -> None:
        if self._layout is None:
            return
        labels = {
            n: node_label(sv, self._now, ascii_only=self.ascii_only)
            for n, sv in self._states.items()
            if n in self._g_nodes
        }
        for n, badge in self._badges.items():
            if n in labels:
                labels[n] += f" [{badge}]"
        self._picture = render_graph(self._layout, labels, ascii_only=self.ascii_only)
        self.virtual_size = Size(self._picture.width, len(self._picture.rows))
        self.refresh()

    def _scroll_to_cursor(self) -> None:
        if self._picture is None or self.cursor not in self._picture.boxes:
            return
        r, x0, x1 = self._picture.boxes[self.cursor]
        self.scroll_to_region(Region(x0, r, x1 - x0, 1), animate=False, immediate=True, center=True)
