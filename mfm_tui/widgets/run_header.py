"""One line on top of the run screen: op, run id, status, started, duration, progress, manifest, checkpoint."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import Static

from mfm_tui.glyphs import ascii_text, short_id
from mfm_tui.run_model import RunDisplayStatus, RunModel
from mfm_tui.time_format import countdown_text, format_duration
from mfm_tui.widgets.static_update import update_changed

__all__ = ["RUN_GLYPHS", "RunHeader"]

RUN_GLYPHS: dict[RunDisplayStatus, tuple[str, str]] = {
    RunDisplayStatus.PENDING: ("○", "."),
    RunDisplayStatus.RUNNING: ("●", "*"),
    RunDisplayStatus.RETRYING: ("↻", "~"),
    RunDisplayStatus.COMPLETED: ("✓", "+"),
    RunDisplayStatus.FAILED: ("✗", "x"),
    RunDisplayStatus.CANCELLED: ("■", "#"),
    RunDisplayStatus.CANCELLING: ("■", "#"),
    RunDisplayStatus.WORKER_LOST: ("!", "!"),
    RunDisplayStatus.STARTING: ("○", "."),
    RunDisplayStatus.NOT_STARTED: ("!", "!"),
    RunDisplayStatus.CRASH_LOOPING: ("!", "!"),
}
_STATUS_CLASS = {
    RunDisplayStatus.FAILED: "-failed",
    RunDisplayStatus.WORKER_LOST: "-failed",
    RunDisplayStatus.NOT_STARTED: "-failed",
    RunDisplayStatus.CRASH_LOOPING: "-failed",
    RunDisplayStatus.RETRYING: "-retrying",
    RunDisplayStatus.CANCELLING: "-retrying",
    RunDisplayStatus.COMPLETED: "-completed",
}


class RunHeader(Static):
    """``demo_fanout 3f2a91c0  ● running 21s  4/8 done  started 12:00:03  manifest 9c1e0f…  checkpoint 4be1aa…``"""

    DEFAULT_CSS = """
    RunHeader {
        height: auto;
        background: $panel;
        color: $foreground;
        padding: 0 1;
    }
    RunHeader.-failed { background: $error 30%; }
    RunHeader.-retrying { background: $warning 25%; }
    RunHeader.-completed { background: $success 15%; }
    """

    def __init__(self, *, ascii_only: bool = False, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes)
        self.ascii_only = ascii_only

    def show(self, model: RunModel, now_millis: int, note: str = "", *, wide: bool = True) -> None:
        wanted = _STATUS_CLASS.get(model.status)
        for cls in set(_STATUS_CLASS.values()):  # only real changes: each one restyles the screen
            self.set_class(cls == wanted, cls)
        update_changed(self, self.render_model(model, now_millis, note, wide=wide))

    def render_model(self, model: RunModel, now: int, note: str = "", *, wide: bool = True) -> Text:
        status = model.status
        glyph = RUN_GLYPHS[status][1 if self.ascii_only else 0]
        t = Text()

        def add(text: str, style: str = "") -> None:
            t.append(ascii_text(text) if self.ascii_only else text, style=style)

        add(f"{model.op_id or '?'} ", "bold")
        add(f"{model.short_id}  ")
        add(f"{glyph} {model.status_label}", "bold")
        add(f" {format_duration(model.duration_millis(now), unknown='—', round_tenths=True)}  ")
        add(f"{model.done}/{model.total} done  ")
        retry = model.retry_target
        if retry is not None:
            due = countdown_text(retry.remaining_millis(now))
            label = f"{retry.next_attempt_number}/{retry.max_attempts}" if retry.max_attempts else "next"
            add(f"{retry.state.short_name} {label} in {due}  ", "bold")
        elif model.error is not None:
            add(f"[{model.error[0]}]  ", "bold")
        loop = model.crash_loop
        if status is RunDisplayStatus.CRASH_LOOPING and loop is not None:
            add(f"{loop.recoveries} orphan recoveries in a row  ", "bold")
        elif status is RunDisplayStatus.NOT_STARTED:
            add("died before RunStarted  ", "bold")
        if wide and model.started_millis is not None:
            add("started " + time.strftime("%H:%M:%S", time.gmtime(model.started_millis // 1000)) + "  ")
        add(f"manifest {short_id(model.manifest_id)}  checkpoint {short_id(model.checkpoint_id)}")
        if note:
            add(f"  {note}", "italic")
        return t
