"""Time formatting for the monitor ("3m ago", "1m12s", "in 7s") and a ticking ``Countdown`` label.

The formatting functions are pure (tested without a terminal); every clock reading comes from the
app's injected ``Clock`` so snapshots with a ``FrozenClock`` are stable.
"""

from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import Static

from mfm_tui.clock import Clock

__all__ = ["Countdown", "format_ago", "format_countdown", "format_duration"]


def format_duration(millis: int | None) -> str:
    """``0.4s``, ``12s``, ``1m12s``, ``2h03m``, ``3d04h``; ``None`` → empty."""
    if millis is None:
        return ""
    millis = max(0, millis)
    if millis < 10_000:
        tenths = millis // 100
        return f"{tenths // 10}.{tenths % 10}s"
    secs = millis // 1000
    if secs < 60:
        return f"{secs}s"
    mins, secs = divmod(secs, 60)
    if mins < 60:
        return f"{mins}m{secs:02d}s"
    hours, mins = divmod(mins, 60)
    if hours < 24:
        return f"{hours}h{mins:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_ago(then_millis: int | None, now_millis: int) -> str:
    """``just now``, ``12s ago``, ``3m ago``, ``1h ago``, ``2d ago``; ``None`` → empty."""
    if then_millis is None:
        return ""
    secs = (now_millis - then_millis) // 1000
    if secs < 0:
        return "future"
    if secs < 5:
        return "just now"
    if secs < 60:
        return f"{secs}s ago"
    if secs < 3600:
        return f"{secs // 60}m ago"
    if secs < 86_400:
        return f"{secs // 3600}h ago"
    return f"{secs // 86_400}d ago"


def format_countdown(target_millis: int | None, now_millis: int) -> str:
    """``in 7s`` (rounded up, so it never shows ``in 0s`` early), ``due`` once passed; ``None`` → empty."""
    if target_millis is None:
        return ""
    remaining = target_millis - now_millis
    if remaining <= 0:
        return "due"
    secs = -(-remaining // 1000)
    if secs < 60:
        return f"in {secs}s"
    mins, secs = divmod(secs, 60)
    if mins < 60:
        return f"in {mins}m{secs:02d}s"
    hours, mins = divmod(mins, 60)
    return f"in {hours}h{mins:02d}m"


class Countdown(Static):
    """``in 7s``, refreshed every second from ``clock`` until the target passes (then ``due``)."""

    DEFAULT_CSS = """
    Countdown {
        width: auto;
        height: 1;
    }
    """

    target_millis: reactive[int | None] = reactive(None)

    def __init__(
        self, clock: Clock, target_millis: int | None = None, *, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__("", id=id, classes=classes)
        self._clock = clock
        self.set_reactive(Countdown.target_millis, target_millis)

    def on_mount(self) -> None:
        self.tick()
        self.set_interval(1.0, self.tick)

    def watch_target_millis(self) -> None:
        self.tick()

    def tick(self) -> None:
        self.update(format_countdown(self.target_millis, self._clock.now_millis()))
