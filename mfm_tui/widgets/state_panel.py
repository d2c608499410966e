"""Details of one state: status, attempts (errors as code + message), snapshots, facts, duration."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from mfm_tui.glyphs import ascii_text, short_id, status_glyph
from mfm_tui.run_model import StateStatus, StateView
from mfm_tui.time_format import countdown_text, format_duration
from mfm_tui.widgets.static_update import update_changed

__all__ = ["StatePanel"]

_STATUS_STYLE = {
    StateStatus.RUNNING: "bold",
    StateStatus.RETRYING: "bold",
    StateStatus.FAILED: "bold",
}


class StatePanel(Static):
    """A read-only view of a ``StateView``; ``show(state, now)`` redraws it."""

    DEFAULT_CSS = """
    StatePanel {
        background: $surface;
        padding: 0 1;
        height: auto;
    }
    """

    def __init__(self, *, ascii_only: bool = False, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes)
        self.ascii_only = ascii_only
        self.state: StateView | None = None

    def show(self, state: StateView | None, now_millis: int) -> None:
        self.state = state
        update_changed(self, self.render_state(state, now_millis))

    def _a(self, text: str) -> Text:
        return Text(ascii_text(text) if self.ascii_only else text)

    def render_state(self, sv: StateView | None, now: int) -> Table | Text:
        if sv is None:
            return Text("no state selected: move in the graph with the arrow keys", style="italic")
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        status = Text(f"{status_glyph(sv.status, ascii_only=self.ascii_only)} {sv.status.value}")
        status.stylize(_STATUS_STYLE.get(sv.status, ""))
        if sv.status is StateStatus.RETRYING:
            remaining = None if sv.not_before_millis is None else max(0, sv.not_before_millis - now)
            due = countdown_text(remaining)
            status.append(f"  attempt {sv.attempt_label}" + (f" in {due}" if due else ""))
        elif sv.attempts:
            status.append(f"  attempt {sv.attempt_label}")
        grid.add_row("state", self._a(sv.state_id))
        grid.add_row("status", status)
        err = sv.error
        if err is not None and sv.status is not StateStatus.COMPLETED:
            err_text = self._a(f"[{err[0]}] {err[1]}")
            err_text.stylize("bold")
            grid.add_row("error", err_text)
        last = sv.last
        if last is not None:
            grid.add_row(
                "base", self._a(f"{short_id(last.base_snapshot_id)}   result {short_id(last.result_snapshot_id)}")
            )
            grid.add_row("took", self._a(format_duration(last.duration_millis(now), unknown="—", round_tenths=True)))
        facts = sv.facts
        if facts:
            shown = ", ".join(f"{f.key} → {short_id(f.payload_id)}" for f in facts[:3])
            more = f" (+{len(facts) - 3})" if len(facts) > 3 else ""
            grid.add_row("facts", self._a(shown + more))
        for att in sv.attempts[-4:]:
            if att.is_open:
                outcome = "open"
            elif att.completed:
                outcome = "completed"
            else:
                outcome = f"failed [{att.error_code}] {att.error_message or ''}".rstrip()
            seqs = f"seq {att.entered_seq or '?'}" + (f"–{att.terminal_seq}" if att.terminal_seq else "")
            grid.add_row(
                f"#{att.attempt + 1}",
                self._a(
                    f"{outcome}  {format_duration(att.duration_millis(now), unknown='—', round_tenths=True)}  {seqs}"
                ),
            )
        if len(sv.attempts) > 4:
            grid.add_row("", Text(f"{len(sv.attempts) - 4} earlier attempts", style="italic"))
        return grid
