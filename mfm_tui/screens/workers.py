"""The workers view (``w`` on the runs list, ``:workers``): live workers and their leases.

One row per run a worker holds or lost: pid, host, run, its operation and current state, the heartbeat's age and
how long the lease has been held; a lost worker's lease is flagged stale (``!``, first). The rows come from
``engine.workers.worker_leases`` (a filesystem store's lease files, a PostgreSQL store's pool queue), read in a
Textual worker once a second; the run's operation and state come from the app's run models.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from engine.ids import RunId
from engine.workers import WorkerLease, is_pooled, worker_leases
from mfm_tui.messages import RunSelected
from mfm_tui.services import services_of
from mfm_tui.time_format import format_duration

__all__ = ["WorkerRow", "WorkersScreen", "worker_rows"]

LeaseSource = Callable[[], Awaitable[list[WorkerLease]]]
REFRESH_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One row of the view, as text (pure: tested without a terminal)."""

    run_id: str
    flag: str
    """``!`` when the lease is stale, else empty."""
    cells: tuple[str, ...]


COLUMNS = ("WORKER", "RUN", "OP", "STATE", "HOST", "PID", "HEARTBEAT", "HELD")


def worker_rows(
    leases: list[WorkerLease], models: dict[Any, Any], now_millis: int, *, stale_glyph: str = "!"
) -> list[WorkerRow]:
    """Stale leases first (a lost worker needs an operator), then the longest held. The first cell says how the
    worker is: ``! stale``, ``live`` or ``queued``."""
    ordered = sorted(leases, key=lambda w: (not w.stale, w.started_at or 0, str(w.run_id)))
    rows = []
    for lease in ordered:
        model = models.get(lease.run_id)
        op = "?" if model is None else str(model.op_id or "?")
        state = "-"
        if model is not None and model.current_state is not None:
            state = model.current_state.short_name
        if lease.action == "queued" and lease.pid is None:
            beat, word = "-", "queued"
        elif lease.heartbeat_age_millis is not None:
            beat = format_duration(lease.heartbeat_age_millis, unknown="-") + " ago"
            word = "stale" if lease.stale else "live"
        else:  # a filesystem store: the lease file's lock is the heartbeat, checked just now
            beat = "lock free" if lease.stale else "lock held"
            word = "stale" if lease.stale else "live"
        held = "-" if lease.started_at is None else format_duration(max(0, now_millis - lease.started_at), unknown="-")
        cells = (
            f"{stale_glyph} {word}" if lease.stale else word,
            str(lease.run_id)[:8],
            op,
            state,
            lease.host or "-",
            "-" if lease.pid is None else str(lease.pid),
            beat,
            held,
        )
        rows.append(WorkerRow(str(lease.run_id), stale_glyph if lease.stale else "", cells))
    return rows


class WorkersScreen(Screen[None]):
    """``WorkersScreen(source=None)``: live workers and leases; ``source`` replaces the store's (tests).

    | Key(s) | Description |
    | :- | :- |
    | enter | Open the worker's run. |
    | j, k | Down, up. |
    | escape | Back. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", tooltip="Back to the previous view"),
        Binding("enter", "open_run", "Open run", tooltip="Open the selected worker's run"),
        Binding("j", "cursor('down')", "Down", show=False, tooltip="Next worker"),
        Binding("k", "cursor('up')", "Up", show=False, tooltip="Previous worker"),
    ]

    DEFAULT_CSS = """
    WorkersScreen > #workers-title { height: 1; padding: 0 1; background: $panel; text-style: bold; }
    WorkersScreen > #workers-note { height: auto; padding: 0 1; color: $text-muted; }
    WorkersScreen > DataTable { height: 1fr; }
    """

    def __init__(self, *, source: LeaseSource | None = None) -> None:
        super().__init__()
        self._source = source
        self.rows: list[WorkerRow] = []
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("Workers", id="workers-title")
        yield Static("", id="workers-note")
        table: DataTable[str] = DataTable(cursor_type="row", zebra_stripes=False, id="workers-table")
        table.add_columns(*COLUMNS)
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        self.refresh_leases()
        if services_of(self.app).watch_store:
            self.set_interval(REFRESH_SECONDS, self.refresh_leases)

    # ------------------------------------------------------------------ loading

    def _lease_source(self) -> LeaseSource | None:
        if self._source is not None:
            return self._source
        store = services_of(self.app).store
        if not (callable(getattr(store, "run_dir", None)) or is_pooled(store)):
            return None
        return lambda: worker_leases(store)

    @work(exclusive=True, group="workers")
    async def refresh_leases(self) -> None:
        """Read the leases (a Textual worker) and show them."""
        source = self._lease_source()
        if source is None:
            self.error = "this store runs no worker processes (nothing holds a lease)"
            self._show([])
            return
        try:
            leases = await source()
        except Exception as exc:  # shown in place, never a traceback
            code = getattr(getattr(exc, "info", None), "code", type(exc).__name__)
            self.error = f"[{code}] {getattr(exc, 'message', exc)}"
            self._show([])
            return
        self.error = None
        self._show(leases)

    def _show(self, leases: list[WorkerLease]) -> None:
        if not self.is_attached:
            return  # closed while reading
        services = services_of(self.app)
        self.rows = worker_rows(leases, services.watcher.models, services.clock.now_millis(), stale_glyph="!")
        table = self.query_one(DataTable)
        keep = table.cursor_row
        table.clear()
        for row in self.rows:
            table.add_row(*row.cells, key=row.run_id)
        if self.rows:
            table.move_cursor(row=min(keep, len(self.rows) - 1))
        stale = sum(1 for r in self.rows if r.flag.strip())
        live = len(self.rows) - stale
        title = f"Workers  {live} live  {stale} stale"
        self.query_one("#workers-title", Static).update(title)
        note = self.error or ("no worker holds a run" if not self.rows else "")
        if stale and not self.error:
            note = "! stale: its worker was lost; enter opens the run, r there resumes it"
        self.query_one("#workers-note", Static).update(note)

    # ------------------------------------------------------------------ actions

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def action_cursor(self, direction: str) -> None:
        table = self.query_one(DataTable)
        table.action_cursor_down() if direction == "down" else table.action_cursor_up()

    @on(DataTable.RowSelected)
    def _on_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_run()

    def action_open_run(self) -> None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row < 0:
            return
        self.app.post_message(RunSelected(RunId(self.rows[table.cursor_row].run_id)))
