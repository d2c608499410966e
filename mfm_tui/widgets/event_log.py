"""The run's event log: a virtualised Line-API ``ScrollView`` over a ``LogSource``.

Only the visible lines are parsed (and cached by line), so a run of a million events opens as fast as a small one.
Follow mode (on by default) keeps the newest event in view; moving up or scrolling up pauses it, ``f``, ``G`` or
``end`` resume it. A filter narrows the log to an index array of matching lines, computed off the UI thread for big
files; ``n``/``N`` jump to the next/previous line containing the search text, wrapping around (``find_status``).
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_left
from collections import OrderedDict
from typing import ClassVar

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual import events, work
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.scrollbar import ScrollTo, ScrollUp
from textual.strip import Strip
from textual.worker import get_current_worker

from mfm_tui.glyphs import ascii_text
from mfm_tui.log_index import FileLogSource, ListLogSource, LogFilter, LogLine, LogSource, summarize

__all__ = ["EventLog", "format_time"]

_CACHE_LINES = 2048
TEXT_STEP = 8
"""Cells per ``left`` / ``right`` in the details column."""
_SYNC_LIMIT = 20_000
"""Event files with more lines than this are filtered and searched by worker threads."""


def format_time(ts_millis: int | None) -> str:
    """``12:00:03.120`` (UTC), or blanks when the envelope has no timestamp."""
    if ts_millis is None:
        return " " * 12
    secs, ms = divmod(ts_millis, 1000)
    return time.strftime("%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}"


class EventLog(ScrollView, can_focus=True):
    """Every event of one run: seq, time, kind, state, one-line summary.

    ``set_source`` gives it a ``LogSource``; ``lines_appended`` / ``index_ready`` say that the source grew or can now
    be read in full. ``enter`` posts ``EventOpened``; follow and view changes post ``FollowChanged`` / ``ViewChanged``.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "toggle_follow", "Follow", tooltip="Follow new events on/off (scrolling up pauses it)"),
        Binding("n", "find_next", "Next match", show=False, tooltip="Next log line with the find text"),
        Binding("N", "find_previous", "Prev match", show=False, tooltip="Previous log line with the find text"),
        Binding("enter", "open_event", "Event", tooltip="Show the event's full envelope (JSON)"),
        Binding("j,down", "cursor_down", "Down", show=False, tooltip="Log: next event"),
        Binding("k,up", "cursor_up", "Up", show=False, tooltip="Log: previous event (pauses follow)"),
        Binding("g,home", "cursor_top", "Top", show=False, tooltip="Log: first event"),
        Binding("G,end", "cursor_bottom", "Bottom (follow)", show=False, tooltip="Log: last event, follow again"),
        Binding("pagedown", "page_down", "Page down", show=False, tooltip="Log: a page down"),
        Binding("pageup", "page_up", "Page up", show=False, tooltip="Log: a page up (pauses follow)"),
        Binding("left", "scroll_text(-1)", "Scroll left", show=False, tooltip="Log: the details, to the left"),
        Binding("right", "scroll_text(1)", "Scroll right", show=False, tooltip="Log: the details, to the right"),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | f | Follow new events on/off. |
    | n, N | Next / previous line with the find text. |
    | enter | Show the event's full envelope (posts `EventOpened`). |
    | j, down / k, up | Next / previous event (up pauses follow). |
    | g, home / G, end | First event / last event (follows again). |
    | pagedown, pageup | A page down / up (up pauses follow). |
    | left / right | Scroll the details column sideways (a cut line ends with `…`). |
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "event-log--seq",
        "event-log--time",
        "event-log--kernel",
        "event-log--domain",
        "event-log--failed",
        "event-log--state",
        "event-log--match",
        "event-log--cursor",
        "event-log--pending",
    }
    """
    | Class | Description |
    | :- | :- |
    | `event-log--seq` | The event's seq. |
    | `event-log--time` | Its time. |
    | `event-log--kernel` | A kernel event's kind (`StateEntered`, …). |
    | `event-log--domain` | A domain event's kind (`fact_recorded`, …). |
    | `event-log--failed` | `StateFailed` and corrupt lines. |
    | `event-log--state` | The state and the summary. |
    | `event-log--match` | The find text in a line. |
    | `event-log--cursor` | The line under the cursor. |
    | `event-log--pending` | A line not indexed yet. |
    """

    DEFAULT_CSS = """
    EventLog {
        background: $surface;
        scrollbar-size-vertical: 1;
    }
    EventLog > .event-log--seq { color: $text-muted; }
    EventLog > .event-log--time { color: $text-muted; }
    EventLog > .event-log--kernel { color: $text-accent; }
    EventLog > .event-log--domain { color: $text-secondary; }
    EventLog > .event-log--failed { color: $error; text-style: bold; }
    EventLog > .event-log--state { color: $foreground; }
    EventLog > .event-log--match { background: $warning 40%; }
    EventLog > .event-log--cursor { background: $accent 30%; }
    EventLog > .event-log--pending { color: $text-muted; text-style: italic; }
    """

    follow: reactive[bool] = reactive(True)
    """Keep the newest event in view (scrolling or moving up pauses it)."""
    cursor: reactive[int] = reactive(-1, always_update=True)
    """Row (in the shown view) under the cursor; -1 = none yet."""
    text_offset: reactive[int] = reactive(0)
    """How far the details column is scrolled sideways (``left`` / ``right``), in cells."""

    class CursorMoved(Message):
        """The cursor is on another line (or the view changed under it)."""

        def __init__(self, log: EventLog, row: int) -> None:
            super().__init__()
            self.log = log
            self.row = row

        @property
        def control(self) -> EventLog:
            """The log whose cursor moved."""
            return self.log

    class FollowChanged(Message):
        """Follow mode went on or off."""

        def __init__(self, log: EventLog, follow: bool) -> None:
            super().__init__()
            self.log = log
            self.follow = follow

        @property
        def control(self) -> EventLog:
            """The log whose follow mode changed."""
            return self.log

    class EventOpened(Message):
        """``enter`` on a line: its raw envelope bytes."""

        def __init__(self, log: EventLog, seq: int, raw: bytes) -> None:
            super().__init__()
            self.log = log
            self.seq = seq
            self.raw = raw

        @property
        def control(self) -> EventLog:
            """The log the event was opened in."""
            return self.log

    class ViewChanged(Message):
        """The filter, the number of shown lines or the search text changed (for the title)."""

        def __init__(self, log: EventLog) -> None:
            super().__init__()
            self.log = log

        @property
        def control(self) -> EventLog:
            """The log whose view changed."""
            return self.log

    def __init__(
        self,
        source: LogSource | None = None,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.source: LogSource = source if source is not None else ListLogSource()
        self.filter = LogFilter()
        self.search: str = ""
        self.find_status: str = ""
        """How the last find went: ``""``, ``wrapped to the top`` / ``wrapped to the end`` or ``not found``."""
        self.view: array[int] | None = None
        """Line indexes shown while a filter is active; ``None`` = every line."""
        self.ascii_only = False
        self.note: tuple[int | None, str, str] | None = None
        """A synthetic last row ``(ts_millis, who, text)`` that is no event of the run (the operator's cancel
        request, from the store's control records): shown after the last event, never selectable."""
        self._cache: OrderedDict[int, LogLine] = OrderedDict()
        self._filtering = False

    # ------------------------------------------------------------------ data in

    def set_source(self, source: LogSource) -> None:
        self.source = source
        self._cache.clear()
        self.view = None
        if self.filter.active:
            self.apply_filter(self.filter)
        self._update_size()
        if self.follow:
            self._go_end()
        self.refresh()

    def lines_appended(self, added: int) -> None:
        """The source grew by ``added`` lines (already in ``source``): extend the view, follow."""
        if added <= 0:
            return
        total = len(self.source)
        if self.view is not None and self.filter.active:
            conds = self.filter.needles()
            for i in range(total - added, total):
                raw = self.source.raw(i)
                if raw is not None and all(any(n in raw for n in alts) for alts in conds):
                    self.view.append(i)
        self._update_size()
        if self.follow:
            self._go_end()
        self.refresh()
        self.post_message(self.ViewChanged(self))

    def index_ready(self) -> None:
        """The full offset index landed: lines above the tail can now be drawn."""
        self._cache.clear()
        self._update_size()
        self.refresh()

    def set_note(self, note: tuple[int | None, str, str] | None) -> None:
        if note != self.note:
            self.note = note
            self._update_size()
            if self.follow:
                self._go_end()
            self.refresh()

    @property
    def row_count(self) -> int:
        return len(self.view) if self.view is not None else len(self.source)

    def line_at(self, row: int) -> int:
        """Source line index of a shown row."""
        return self.view[row] if self.view is not None else row

    def apply_filter(self, flt: LogFilter, search: str = "") -> None:
        self.filter = flt
        self.search = search
        self.find_status = ""
        if not flt.active:
            self.view = None
            self._after_view_change()
            return
        if isinstance(self.source, FileLogSource) and len(self.source) > _SYNC_LIMIT:
            self._filtering = True
            self._filter_worker(flt)
        else:
            self._ensure_index()
            self.view = self.source.filter(flt)
            self._after_view_change()

    def find(self, *, backwards: bool = False, from_cursor: bool = False) -> bool:
        """Move to the next (previous) line containing the search text, wrapping around at the end (start).

        ``from_cursor``: the cursor's own line counts (a new search starts where the operator is). ``find_status``
        then says ``wrapped`` or ``not found`` (the screen's title shows it; a miss also rings the bell). Small logs
        are searched at once (returns whether a line was found); a big event file is searched by a worker thread
        (``mmap.find``) and the cursor moves when it answers (returns ``False`` meanwhile).
        """
        if not self.search or self.row_count == 0:
            return False
        step = 0 if from_cursor else (-1 if backwards else 1)
        start_row = self.cursor + step
        wrap_row = self.row_count - 1 if backwards else 0
        if self.cursor < 0 or not 0 <= start_row < self.row_count:
            start_row, wrapped = wrap_row, self.cursor >= 0
        else:
            wrapped = False
        start_line, wrap_line = self.line_at(start_row), self.line_at(wrap_row)
        if wrapped:
            wrap_line = -1  # already from the other end: no second pass
        needle = self.search.encode()
        if isinstance(self.source, FileLogSource) and len(self.source) > _SYNC_LIMIT:
            self._find_worker(needle, start_line, wrap_line, backwards, wrapped, self.view)
            return False
        self._ensure_index()
        hit = self.source.find(needle, start_line, backwards=backwards, among=self.view)
        if hit < 0 and wrap_line >= 0:
            hit, wrapped = self.source.find(needle, wrap_line, backwards=backwards, among=self.view), True
        return self._found(hit, wrapped)

    # ------------------------------------------------------------------ rendering

    @property
    def top_row(self) -> int:
        """The row shown on the first line. Following, the end is drawn at once: from the first frame after
        ``set_source`` or ``lines_appended``, not a frame later once the deferred ``scroll_end`` has moved the
        offset (the scroll offset catches up to the same row)."""
        if self.follow:
            return max(0, self.virtual_size.height - (self.scrollable_content_region.height or self.size.height))
        return self.scroll_offset.y

    def render_line(self, y: int) -> Strip:
        scroll_x = self.scroll_offset.x
        width = self.scrollable_content_region.width  # without the scrollbar: a cut line ends with "…"
        base = self.rich_style
        row = self.top_row + y
        if row == self.row_count and self.note is not None:
            ts, who, text = self.note
            style = base + self.get_component_rich_style("event-log--pending")
            note = f"{'':>7} {format_time(ts)} {who:<17.17} {ascii_text(text) if self.ascii_only else text}"
            return Strip([Segment(note, style)]).crop_extend(0, width, base)
        if row >= self.row_count:
            return Strip.blank(width, base)
        line = self.line_at(row)
        info = self._summary(line)
        if info is None:
            pending = self.get_component_rich_style("event-log--pending")
            dots = "..." if self.ascii_only else "…"
            segs = [Segment(f"{line + 1:>7} ", base + pending), Segment(f"{dots} indexing", base + pending)]
        else:
            segs = self._segments(info, base, width)
        if row == self.cursor:
            cursor = self.get_component_rich_style("event-log--cursor")
            segs = [Segment(s.text, (s.style or base) + cursor) for s in segs]
            pad = width - sum(len(s.text) for s in segs)
            if pad > 0:
                segs.append(Segment(" " * pad, base + cursor))
        strip = Strip(segs).crop_extend(scroll_x, scroll_x + width, base)
        return strip.apply_offsets(scroll_x, row)

    # ------------------------------------------------------------------ watchers and handlers

    def watch_text_offset(self) -> None:
        self.refresh()

    def watch_cursor(self, old: int, new: int) -> None:
        self.post_message(self.CursorMoved(self, new))
        if 0 <= new < self.row_count:
            top = self.top_row
            height = self.scrollable_content_region.height or 1
            if new < top:
                self.scroll_to(y=new, animate=False)
            elif new >= top + height:
                self.scroll_to(y=new - height + 1, animate=False)
        self.refresh()

    def on_mount(self) -> None:
        self._update_size()
        if self.follow:
            self._go_end()

    def on_click(self, event: events.Click) -> None:
        row = self.top_row + event.y
        if 0 <= row < self.row_count:
            if row != self.row_count - 1:
                self._set_follow(False)
            self.cursor = row
            if event.chain == 2:
                self.action_open_event()

    # Only the user's own scrolling pauses follow (the wheel, the scrollbar), never a scroll caused by new lines.
    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        if self.row_count > self.scrollable_content_region.height:
            self._set_follow(False)

    def on_scroll_up(self, message: ScrollUp) -> None:
        self._set_follow(False)

    def on_scroll_to(self, message: ScrollTo) -> None:
        if message.y is not None and message.y < self.max_scroll_y:
            self._set_follow(False)

    # ------------------------------------------------------------------ actions

    def action_toggle_follow(self) -> None:
        self._set_follow(not self.follow)
        if self.follow:
            self._go_end()

    def action_find_next(self) -> None:
        self.find()

    def action_find_previous(self) -> None:
        self.find(backwards=True)

    def action_cursor_down(self) -> None:
        if self.cursor < self.row_count - 1:
            self.cursor += 1

    def action_cursor_up(self) -> None:
        if self.cursor > 0:
            self._set_follow(False)
            self.cursor -= 1

    def action_cursor_top(self) -> None:
        self._set_follow(False)
        self.cursor = 0 if self.row_count else -1

    def action_cursor_bottom(self) -> None:
        self._set_follow(True)
        self._go_end()

    def action_page_down(self) -> None:
        self.cursor = min(self.row_count - 1, self.cursor + max(1, self.scrollable_content_region.height - 1))

    def action_page_up(self) -> None:
        self._set_follow(False)
        self.cursor = max(0, self.cursor - max(1, self.scrollable_content_region.height - 1))

    def action_scroll_text(self, direction: int) -> None:
        self.text_offset = max(0, self.text_offset + direction * TEXT_STEP)

    def text_at(self, row: int) -> str:
        """The details (state and summary) of a shown row, in full; ``""`` when not indexed yet."""
        if not 0 <= row < self.row_count:
            return ""
        info = self._summary(self.line_at(row))
        return "" if info is None else f"{info.state} {info.summary}".strip()

    def action_open_event(self) -> None:
        if not 0 <= self.cursor < self.row_count:
            return
        line = self.line_at(self.cursor)
        raw = self.source.raw(line)
        if raw is not None:
            self.post_message(self.EventOpened(self, line + 1, raw))

    # ------------------------------------------------------------------ internals

    def _update_size(self) -> None:
        size = Size(0, self.row_count + (1 if self.note is not None else 0))
        if size == self.virtual_size:
            return
        height = self.scrollable_content_region.height
        if self.is_mounted and 0 < height < min(size.height, self.virtual_size.height):
            # Longer than the view before and after: the scrollbar stays, nothing else on screen moves. Setting
            # ``virtual_size`` would reflow the whole screen and redraw every widget (on each appended event); the
            # scrollbar's range and the clamp of the offset are all that change.
            self.set_reactive(EventLog.virtual_size, size)
            self._scroll_update(size)
            self.refresh()
            return
        self.virtual_size = size

    @work(thread=True, exclusive=True, group="log-filter")
    def _filter_worker(self, flt: LogFilter) -> None:
        src = self.source
        if isinstance(src, FileLogSource) and not src.indexed:
            src.build_index()
        result = src.filter(flt)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._filter_done, flt, result)

    def _filter_done(self, flt: LogFilter, result: array[int]) -> None:
        if flt != self.filter:
            return
        self._filtering = False
        self.view = result
        self._after_view_change()

    def _after_view_change(self) -> None:
        self._update_size()
        if self.follow or self.cursor >= self.row_count:
            self._go_end()
        else:
            self.cursor = self.cursor
        self.refresh()
        self.post_message(self.ViewChanged(self))

    def _ensure_index(self) -> None:
        """A small event file whose index is still building: finish it here (a few milliseconds)."""
        if isinstance(self.source, FileLogSource) and not self.source.indexed:
            self.source.build_index()
            self._cache.clear()

    @work(thread=True, exclusive=True, group="log-find")
    def _find_worker(
        self, needle: bytes, start: int, wrap: int, backwards: bool, wrapped: bool, view: array[int] | None
    ) -> None:
        hit = self.source.find(needle, start, backwards=backwards, among=view)
        if hit < 0 and wrap >= 0:
            hit, wrapped = self.source.find(needle, wrap, backwards=backwards, among=view), True
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._found, hit, wrapped)

    def _found(self, hit: int, wrapped: bool = False) -> bool:
        if hit < 0:
            self.find_status = "not found"
            self.app.bell()
        elif wrapped:
            after = hit > self.line_at(max(0, self.cursor))
            self.find_status = "wrapped to the end" if after else "wrapped to the top"
        else:
            self.find_status = ""
        if self.find_status:
            self.notify(f"find {self.search!r}: {self.find_status}", timeout=3)
        if hit >= 0:
            self._set_follow(False)
            self.cursor = hit if self.view is None else _row_of(self.view, hit)
        self.post_message(self.ViewChanged(self))
        return hit >= 0

    def _set_follow(self, value: bool) -> None:
        if self.follow != value:
            self.follow = value
            self.post_message(self.FollowChanged(self, value))

    def _go_end(self) -> None:
        self.cursor = max(self.row_count - 1, -1)
        # After the refresh that applies the new virtual size, so max_scroll_y already counts the new lines.
        self.scroll_end(animate=False, x_axis=False)

    def _summary(self, line: int) -> LogLine | None:
        got = self._cache.get(line)
        if got is not None:
            self._cache.move_to_end(line)
            return got
        raw = self.source.raw(line)
        if raw is None:
            return None
        got = summarize(raw)
        self._cache[line] = got
        if len(self._cache) > _CACHE_LINES:
            self._cache.popitem(last=False)
        return got

    def _segments(self, info: LogLine, base: Style, width: int) -> list[Segment]:
        c = self.get_component_rich_style
        if info.kind == "StateFailed" or info.kind == "corrupt":
            kind_style = c("event-log--failed")
        elif info.kind[:1].isupper():
            kind_style = c("event-log--kernel")
        else:
            kind_style = c("event-log--domain")
        state = info.state if width >= 110 else info.state.rsplit(".", 1)[-1]
        state_w = 24 if width >= 110 else 12
        text = f"{state:<{state_w}} {info.summary}"
        if self.ascii_only:
            text = ascii_text(text)
        segs = [
            Segment(f"{info.seq:>7} ", base + c("event-log--seq")),
            Segment(f"{format_time(info.ts_millis)} ", base + c("event-log--time")),
            Segment(f"{info.kind:<17.17} ", base + kind_style),
        ]
        text_style = base + c("event-log--state")
        if self.search and self.search in text:
            k = text.index(self.search)
            match = c("event-log--match")
            parts = [
                Segment(text[:k], text_style),
                Segment(self.search, text_style + match),
                Segment(text[k + len(self.search) :], text_style),
            ]
        else:
            parts = [Segment(text, text_style)]
        room = width - sum(cell_len(seg.text) for seg in segs)
        segs += _window(parts, self.text_offset, room, "..." if self.ascii_only else "…", text_style)
        return segs


def _window(parts: list[Segment], offset: int, room: int, ellipsis: str, style: Style) -> list[Segment]:
    """``parts`` seen through a window of ``room`` cells from ``offset``: a cut on either side shows ``ellipsis``."""
    strip = Strip(parts)
    total = strip.cell_length
    if room <= 0:
        return []
    offset = max(0, min(offset, max(0, total - 1)))
    if offset == 0 and total <= room:
        return list(strip)
    mark = cell_len(ellipsis)
    left = mark if offset > 0 else 0
    right = mark if offset + room - left < total else 0
    inner = max(0, room - left - right)
    out: list[Segment] = [Segment(ellipsis, style)] if left else []
    out += list(strip.crop(offset, offset + inner))
    if right:
        out.append(Segment(ellipsis, style))
    return out


def _row_of(view: array[int], line: int) -> int:
    return bisect_left(view, line)
