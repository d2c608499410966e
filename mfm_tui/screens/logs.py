"""The logs view (``L`` on the run screen): the run's ``worker.log`` and its exec programs' stdout and stderr,
following like ``tail -f``.

Three sources, one tab each (``1`` ``2`` ``3``, or ``tab``): ``runs/<id>/worker.log`` (what the run's workers said)
and ``exec.stdout`` / ``exec.stderr`` (what its exec programs printed, one ``<state>#<attempt> <line>`` per line;
``engine.workers.exec_log``). Each is read by a :class:`~mfm_tui.log_tail.LogTail` (``aiofiles``: the end first,
then what is appended) in a Textual worker. Scrolling up pauses following; lines that arrive meanwhile are counted
("+N new") until ``f`` or ``G`` follows again. Only a filesystem store has these files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, Log, Static

from engine.ids import RunId
from engine.stores.fs import framing
from mfm_tui.log_tail import LogTail
from mfm_tui.services import services_of

__all__ = ["LOG_SOURCES", "LogsScreen"]

POLL_SECONDS = 0.25
MAX_LINES = 20_000
"""Lines kept on screen per source (older ones scroll away)."""


@dataclass(frozen=True, slots=True)
class _Source:
    key: str
    label: str
    file: str


LOG_SOURCES = (
    _Source("worker", "worker.log", framing.WORKER_LOG_FILE),
    _Source("stdout", "stdout", framing.EXEC_OUTPUT_FILES["stdout"]),
    _Source("stderr", "stderr", framing.EXEC_OUTPUT_FILES["stderr"]),
)


class LogsScreen(Screen[None]):
    """``LogsScreen(run_id)``: the run's log files, following.

    | Key(s) | Description |
    | :- | :- |
    | 1, 2, 3, tab | worker.log, exec stdout, exec stderr. |
    | f | Follow on/off (scrolling up pauses it; "+N new" counts what arrived). |
    | j, k, g, G | Down, up, top, bottom (G follows again). |
    | escape | Back to the run. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", tooltip="Back to the run"),
        Binding("1", "show('worker')", "worker.log", tooltip="The run's worker log"),
        Binding("2", "show('stdout')", "stdout", tooltip="What the run's exec programs printed on stdout"),
        Binding("3", "show('stderr')", "stderr", tooltip="What the run's exec programs printed on stderr"),
        Binding("tab", "next_source", "Next", show=False, tooltip="Next log"),
        Binding("f", "toggle_follow", "Follow", tooltip="Follow new lines on/off"),
        Binding("j", "scroll(1)", "Down", show=False, tooltip="Scroll down"),
        Binding("k", "scroll(-1)", "Up", show=False, tooltip="Scroll up (pauses follow)"),
        Binding("g", "top", "Top", show=False, tooltip="First line (pauses follow)"),
        Binding("G", "bottom", "Bottom", show=False, tooltip="Last line, follow again"),
    ]

    DEFAULT_CSS = """
    LogsScreen > #logs-title { height: 1; padding: 0 1; background: $panel; text-style: bold; }
    LogsScreen > Log { height: 1fr; }
    """

    def __init__(self, run_id: str, *, poll: bool | None = None) -> None:
        super().__init__()
        self.run_id = RunId(run_id)
        self.source = "worker"
        self.follow = True
        self.new_while_paused = 0
        self.note = ""
        self._poll = poll
        self._tails: dict[str, LogTail] = {}
        self._lines: dict[str, list[str]] = {s.key: [] for s in LOG_SOURCES}

    def compose(self) -> ComposeResult:
        yield Static("", id="logs-title")
        yield Log(max_lines=MAX_LINES, auto_scroll=True, id="logs-text")
        yield Footer()

    def on_mount(self) -> None:
        folder = self._folder()
        if folder is None:
            self.note = "no log files: this store is not a filesystem store"
        else:
            self._tails = {s.key: LogTail(str(folder / s.file)) for s in LOG_SOURCES}
        self.query_one(Log).focus()
        self._render_title()
        self.poll()
        poll = self._poll if self._poll is not None else services_of(self.app).watch_store
        if poll:
            self.set_interval(POLL_SECONDS, self.poll)

    def _folder(self) -> Path | None:
        run_dir = getattr(services_of(self.app).store, "run_dir", None)
        return Path(run_dir(self.run_id)) if callable(run_dir) else None

    # ------------------------------------------------------------------ reading

    @work(exclusive=True, group="logs")
    async def poll(self) -> None:
        """Read what every source appended (``aiofiles``, off the UI's critical path) and show the current one."""
        try:
            await self._read_sources()
        except NoMatches:
            if self.is_attached and self.is_mounted and self.query("#logs-title"):
                raise
            # else: the screen is being torn down (the app exits, the screen was popped) while it read

    async def _read_sources(self) -> None:
        for key, tail in self._tails.items():
            try:
                got = await tail.read_new()
            except OSError as exc:
                self.note = f"[log_unreadable] {tail.path}: {exc.strerror or exc}"
                continue
            if not self.is_attached:
                return  # closed while reading
            if got.reset:
                self._lines[key] = []
                if key == self.source:
                    self.query_one(Log).clear()
            if got.skipped and key == self.source and not self._lines[key]:
                self.note = f"showing the end: {got.skipped // 1024} KiB before it not read"
            if got.lines:
                self._lines[key] = (self._lines[key] + got.lines)[-MAX_LINES:]
                if key == self.source:
                    self._append(got.lines)
        self._render_title()

    def _append(self, lines: list[str]) -> None:
        log = self.query_one(Log)
        if self.follow and not log.is_vertical_scroll_end and log.line_count > 0 and log.max_scroll_y > 0:
            self._pause()  # the user scrolled away (mouse wheel, page up)
        log.auto_scroll = self.follow
        log.write_lines(lines)
        if not self.follow:
            self.new_while_paused += len(lines)
        self._render_title()

    # ------------------------------------------------------------------ rendering

    def _render_title(self) -> None:
        if not self.is_attached:
            return  # a poll that finished after the screen closed
        tabs = []
        for i, s in enumerate(LOG_SOURCES, 1):
            label = f"{i} {s.label}"
            tabs.append(f"[{label}]" if s.key == self.source else label)
        state = "following" if self.follow else "paused"
        if not self.follow and self.new_while_paused:
            state += f" +{self.new_while_paused} new"
        if not self.follow:
            state += " (f follows)"
        empty = "  (empty so far)" if not self._lines[self.source] else ""
        text = f"Logs {self.run_id[:8]}  {state}  {' '.join(tabs)}{empty}"
        if self.note:
            text += f"  {self.note}"
        self.query_one("#logs-title", Static).update(text)

    def _pause(self) -> None:
        self.follow = False
        self.query_one(Log).auto_scroll = False

    # ------------------------------------------------------------------ actions

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def action_show(self, key: str) -> None:
        self.source = key
        self.new_while_paused = 0
        self.follow = True
        log = self.query_one(Log)
        log.clear()
        log.auto_scroll = True
        log.write_lines(self._lines[key])
        self._render_title()

    def action_next_source(self) -> None:
        keys = [s.key for s in LOG_SOURCES]
        self.action_show(keys[(keys.index(self.source) + 1) % len(keys)])

    def action_toggle_follow(self) -> None:
        if self.follow:
            self._pause()
        else:
            self.action_bottom()
            return
        self._render_title()

    def action_scroll(self, lines: int) -> None:
        log = self.query_one(Log)
        if lines < 0:
            self._pause()
        log.scroll_relative(y=lines, animate=False)
        self._render_title()

    def action_top(self) -> None:
        self._pause()
        self.query_one(Log).scroll_home(animate=False)
        self._render_title()

    def action_bottom(self) -> None:
        self.follow = True
        self.new_while_paused = 0
        log = self.query_one(Log)
        log.auto_scroll = True
        log.scroll_end(animate=False)
        self._render_title()
