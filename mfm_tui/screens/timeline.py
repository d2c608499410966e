"""``T`` on the run screen: the attempt timeline of the selected state, in a dialog (``esc`` closes it)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen

from mfm_tui.run_model import StateView
from mfm_tui.widgets.timeline import AttemptTimeline

__all__ = ["TimelineScreen"]


class TimelineScreen(ModalScreen[None]):
    """``TimelineScreen(state_view, now_millis)``.

    | Key(s) | Description |
    | :- | :- |
    | escape, T | Close. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("T", "close", "Close", show=False),
    ]

    DEFAULT_CSS = """
    TimelineScreen { align: center middle; background: $background 60%; }
    TimelineScreen > #timeline-box {
        width: 90%; max-width: 110; height: auto; max-height: 90%; padding: 0 1;
        border: round $accent; background: $surface;
    }
    App.-theme-mfm-ascii TimelineScreen > #timeline-box { border: ascii $foreground; }
    """

    def __init__(self, state: StateView, now_millis: int, *, ascii_only: bool = False) -> None:
        super().__init__()
        self.state = state
        self.now_millis = now_millis
        self.ascii_only = ascii_only

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="timeline-box"):
            yield AttemptTimeline(ascii_only=self.ascii_only, id="timeline")

    def on_mount(self) -> None:
        box = self.query_one("#timeline-box")
        box.border_title = f"Attempts of {self.state.short_name}"
        self.call_after_refresh(self._draw)

    def _draw(self) -> None:
        self.query_one(AttemptTimeline).show(self.state, self.now_millis)

    def action_close(self) -> None:
        self.dismiss(None)
