"""Status tabs over the runs list: ``All 42  Running 3  Retrying 1  Failed 2  Lost 1  …`` with counts.

One line, plain text (no box drawing), the current tab in reverse so it reads without colour.
``tab`` / ``shift+tab`` (bound on the screen) or a click changes it; the widget posts ``TabChanged``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.events import Click
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from mfm_tui.run_model import RunDisplayStatus

__all__ = ["TABS", "StatusTabs", "tab_matches"]

TABS: tuple[tuple[str, str, frozenset[RunDisplayStatus]], ...] = (
    ("all", "All", frozenset(RunDisplayStatus)),
    (
        "running",
        "Running",
        frozenset(
            {RunDisplayStatus.RUNNING, RunDisplayStatus.PENDING, RunDisplayStatus.STARTING, RunDisplayStatus.CANCELLING}
        ),
    ),
    ("retrying", "Retrying", frozenset({RunDisplayStatus.RETRYING})),
    ("failed", "Failed", frozenset({RunDisplayStatus.FAILED})),
    (
        "lost",
        "Lost",
        frozenset({RunDisplayStatus.WORKER_LOST, RunDisplayStatus.NOT_STARTED, RunDisplayStatus.CRASH_LOOPING}),
    ),
    ("completed", "Completed", frozenset({RunDisplayStatus.COMPLETED})),
    ("cancelled", "Cancelled", frozenset({RunDisplayStatus.CANCELLED})),
)
"""``(key, label, statuses)`` in display order."""

_BY_KEY = {key: statuses for key, _label, statuses in TABS}


def tab_matches(tab: str, status: RunDisplayStatus) -> bool:
    return status in _BY_KEY.get(tab, _BY_KEY["all"])


class StatusTabs(Widget):
    """The status tabs line: ``set_counts`` gives it the runs per status, ``select`` / ``step`` / a click change the
    tab and post ``TabChanged``."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"status-tabs--active", "status-tabs--empty"}
    """
    | Class | Description |
    | :- | :- |
    | `status-tabs--active` | The current tab. |
    | `status-tabs--empty` | A tab without runs. |
    """

    DEFAULT_CSS = """
    StatusTabs {
        height: 1;
        width: 1fr;
        padding: 0 1;
        & > .status-tabs--active { text-style: reverse bold; }
        & > .status-tabs--empty { color: $text-disabled; }
    }
    """

    active: reactive[str] = reactive("all")
    """The current tab's key (``all``, ``running``, ``retrying``, ``failed``, ``lost``, ``completed``, …)."""

    class TabChanged(Message):
        """The current tab changed to ``tab``."""

        def __init__(self, tabs: StatusTabs, tab: str) -> None:
            super().__init__()
            self.tabs = tabs
            self.tab = tab

        @property
        def control(self) -> StatusTabs:
            """The tabs that changed."""
            return self.tabs

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._counts: dict[str, int] = {}
        self._spans: list[tuple[int, int, str]] = []

    def set_counts(self, by_status: Mapping[RunDisplayStatus, int]) -> None:
        counts = {key: sum(by_status.get(s, 0) for s in statuses) for key, _label, statuses in TABS}
        if counts != self._counts:
            self._counts = counts
            self.refresh()

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        active_style = self.get_component_rich_style("status-tabs--active")
        empty_style = self.get_component_rich_style("status-tabs--empty")
        compact = self.size.width and self._natural_width() > self.size.width
        self._spans = []
        for i, (key, label, _statuses) in enumerate(TABS):
            if i:
                text.append(" " if compact else "  ")
            count = self._counts.get(key, 0)
            shown = f"{label[:4] if compact and key != 'all' else label} {count}"
            style = active_style if key == self.active else (empty_style if count == 0 else Style())
            self._spans.append((len(text), len(text) + len(shown), key))
            text.append(shown, style)
        return text

    def _natural_width(self) -> int:
        return sum(len(label) + 1 + len(str(self._counts.get(key, 0))) + 2 for key, label, _ in TABS) + 2

    def select(self, tab: str) -> None:
        if tab in _BY_KEY and tab != self.active:
            self.active = tab
            self.post_message(self.TabChanged(self, tab))

    def step(self, delta: int) -> None:
        keys = [key for key, _label, _statuses in TABS]
        self.select(keys[(keys.index(self.active) + delta) % len(keys)])

    def on_click(self, event: Click) -> None:
        x = event.x - self.styles.padding.left
        for start, end, key in self._spans:
            if start <= x < end:
                self.select(key)
