"""A ticking ``Countdown`` label (``in 7s``, then ``due``).

Its clock is injected (the app's), so snapshots with a frozen clock are stable; the text is
``mfm_tui.time_format.format_countdown``.
"""

from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import Static

from engine import Clock
from mfm_tui.time_format import format_countdown

__all__ = ["Countdown"]


class Countdown(Static):
    """``in 7s``, refreshed every second from ``clock`` until the target passes (then ``due``)."""

    DEFAULT_CSS = """
    Countdown {
        width: auto;
        height: 1;
    }
    """

    target_millis: reactive[int | None] = reactive(None)
    """When the countdown reaches ``due`` (wall-clock milliseconds); ``None`` shows nothing."""

    def __init__(
        self, clock: Clock, target_millis: int | None = None, *, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__("", id=id, classes=classes)
        self._clock = clock
        self.set_reactive(Countdown.target_millis, target_millis)

    def watch_target_millis(self) -> None:
        self.tick()

    def on_mount(self) -> None:
        self.tick()
        self.set_interval(1.0, self.tick)

    def tick(self) -> None:
        self.update(format_countdown(self.target_millis, self._clock.now_millis()))
