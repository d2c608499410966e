"""The attempt timeline of one state: its attempts, their durations, the backoff gaps between them and the orphan
recoveries, drawn as a compact bar over one line per attempt.

``timeline_segments`` and ``timeline_text`` are pure (tested without a terminal); ``AttemptTimeline`` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from rich.text import Text
from textual.widgets import Static

from mfm_tui.run_model import StateView
from mfm_tui.time_format import format_duration

__all__ = ["AttemptTimeline", "Segment", "SegmentKind", "timeline_segments", "timeline_text"]

ORPHAN_CODE = "orphan_attempt_recovered"


class SegmentKind(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    ORPHAN = "orphan"
    """An attempt whose worker died; closed by a later resume (``orphan_attempt_recovered``)."""
    OPEN = "open"
    WAIT = "wait"
    """The gap between an attempt's end and the next one's start (a backoff, or the time until a resume)."""


@dataclass(frozen=True, slots=True)
class Segment:
    kind: SegmentKind
    start: int
    end: int
    attempt: int | None = None
    """1-based, for attempts."""
    note: str = ""

    @property
    def millis(self) -> int:
        return max(0, self.end - self.start)


def timeline_segments(sv: StateView, now_millis: int) -> list[Segment]:
    """Attempts and the gaps between them, in order; an open attempt runs until ``now_millis``; a retry that is
    waiting adds its gap up to ``not_before_millis``."""
    out: list[Segment] = []
    prev_end: int | None = None
    for att in sv.attempts:
        start = att.entered_millis if att.entered_millis is not None else prev_end
        if start is None:
            continue
        if prev_end is not None and start > prev_end:
            after_orphan = bool(out) and out[-1].kind is SegmentKind.ORPHAN
            out.append(Segment(SegmentKind.WAIT, prev_end, start, None, "until the resume" if after_orphan else ""))
        if att.is_open:
            out.append(Segment(SegmentKind.OPEN, start, max(start, now_millis), att.attempt + 1))
            prev_end = None
            continue
        end = att.terminal_millis if att.terminal_millis is not None else start
        if att.completed:
            kind, note = SegmentKind.COMPLETED, ""
        elif att.error_code == ORPHAN_CODE:
            kind, note = SegmentKind.ORPHAN, "worker lost; recovered by a resume"
        else:
            kind, note = SegmentKind.FAILED, f"[{att.error_code}] {att.error_message or ''}".strip()
        out.append(Segment(kind, start, end, att.attempt + 1, note))
        prev_end = end
    if prev_end is not None and sv.not_before_millis is not None and not sv.status.is_done:
        out.append(Segment(SegmentKind.WAIT, prev_end, max(prev_end, sv.not_before_millis), None, "next attempt due"))
    return out


_GLYPHS = {
    False: {
        SegmentKind.COMPLETED: "█",
        SegmentKind.FAILED: "▓",
        SegmentKind.ORPHAN: "!",
        SegmentKind.OPEN: "▶",
        SegmentKind.WAIT: "·",
    },
    True: {
        SegmentKind.COMPLETED: "#",
        SegmentKind.FAILED: "x",
        SegmentKind.ORPHAN: "!",
        SegmentKind.OPEN: ">",
        SegmentKind.WAIT: ".",
    },
}
_STYLES = {
    SegmentKind.COMPLETED: "green",
    SegmentKind.FAILED: "red",
    SegmentKind.ORPHAN: "bold yellow",
    SegmentKind.OPEN: "cyan",
    SegmentKind.WAIT: "dim",
}


def _bar(segments: list[Segment], width: int, ascii_only: bool) -> Text:
    """Each segment gets a share of ``width`` proportional to its duration, at least one cell."""
    bar = Text()
    if not segments:
        return bar
    total = sum(s.millis for s in segments) or 1
    spare = max(width - len(segments), 0)
    for seg in segments:
        cells = 1 + (spare * seg.millis) // total
        bar.append(_GLYPHS[ascii_only][seg.kind] * cells, style=_STYLES[seg.kind])
    return bar


def timeline_text(sv: StateView, now_millis: int, *, width: int = 60, ascii_only: bool = False) -> Text:
    """The bar, a legend, then one line per attempt and gap."""
    segments = timeline_segments(sv, now_millis)
    text = Text()
    if not segments:
        text.append(f"{sv.short_name}: no attempt yet")
        return text
    text.append(f"{sv.state_id}  {len(sv.attempts)} attempt(s)\n", style="bold")
    text.append_text(_bar(segments, width, ascii_only))
    g = _GLYPHS[ascii_only]
    legend = (
        f"\n{g[SegmentKind.COMPLETED]} done  {g[SegmentKind.FAILED]} failed  {g[SegmentKind.ORPHAN]} orphan  "
        f"{g[SegmentKind.OPEN]} running  {g[SegmentKind.WAIT]} wait\n\n"
    )
    text.append(legend, style="dim")
    for seg in segments:
        took = format_duration(seg.millis, unknown="-")
        if seg.kind is SegmentKind.WAIT:
            what = "backoff" if seg.note == "" else seg.note
            text.append(f"        wait {took:>7}  {what}\n", style="dim")
            continue
        label = {
            SegmentKind.COMPLETED: "completed",
            SegmentKind.FAILED: "failed",
            SegmentKind.ORPHAN: "orphan",
            SegmentKind.OPEN: "running",
        }[seg.kind]
        text.append(f"  #{seg.attempt:<3} {label:<9} {took:>7}", style=_STYLES[seg.kind])
        text.append(f"  {seg.note}\n" if seg.note else "\n")
    return text


class AttemptTimeline(Static):
    """The attempt timeline of one state (``show(state_view, now)``)."""

    DEFAULT_CSS = """
    AttemptTimeline { height: auto; }
    """

    def __init__(self, *, ascii_only: bool = False, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.ascii_only = ascii_only

    def show(self, sv: StateView | None, now_millis: int) -> None:
        if sv is None:
            self.update("select a state in the graph first")
            return
        width = max(20, (self.size.width or 60) - 2)
        self.update(timeline_text(sv, now_millis, width=width, ascii_only=self.ascii_only))
