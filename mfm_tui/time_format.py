"""Time formatting for the monitor and the command line: durations ("1m12s"), ages ("3m ago") and countdowns
("in 7s").

Pure functions (tested without a terminal, no Textual): every clock reading comes from the caller, which takes it
from the app's injected clock, so snapshots with a frozen clock are stable.
"""

from __future__ import annotations

import re

__all__ = ["countdown_text", "format_ago", "format_countdown", "format_duration", "parse_duration"]


def format_duration(
    millis: int | None, *, unknown: str = "", tenths_below: int = 10_000, round_tenths: bool = False
) -> str:
    """``0.4s``, ``12s``, ``1m12s``, ``2h03m``, ``3d04h``; ``None`` → ``unknown``.

    Below ``tenths_below`` milliseconds the tenths of a second are shown: truncated (``9.9s``; the runs list, whose
    narrow column never shows ``10.0s`` for a run still under ten seconds), or rounded with ``round_tenths`` (the run
    header and the state panel; the command line passes ``tenths_below=60_000`` for ``42.5s``). A negative duration
    (a clock behind the events) counts as zero.
    """
    if millis is None:
        return unknown
    millis = max(0, millis)
    if millis < tenths_below:
        if round_tenths:
            return f"{millis / 1000:.1f}s"
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


def countdown_text(remaining_millis: int | None) -> str:
    """A retry's wait, rounded up: ``7s``, ``1m05s``; ``None`` → empty (the graph, the state panel, the header)."""
    if remaining_millis is None:
        return ""
    secs = (remaining_millis + 999) // 1000
    if secs >= 60:
        return f"{secs // 60}m{secs % 60:02d}s"
    return f"{secs}s"


_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_MILLIS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_duration(text: str) -> int:
    """``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``, ``500ms`` → milliseconds; ``ValueError`` otherwise."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration (try 90s, 15m, 2h, 1d or 1h30m)")
    return sum(int(n) * _UNIT_MILLIS[u] for n, u in parts)
