"""``s``: start a run. Choose an operation (searchable, with its description), fill its parameters (a form built from
its pydantic model, errors inline), ``ctrl+s`` starts it: ``engine.workers.start_run`` (the same function as
``mfm start``) stores the manifest and spawns a detached worker, and the new run opens, live.

Invalid parameters stay in the form with their field errors and nothing is written. A worker that dies before its
run starts is reported with the path of its log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from engine.errors import MfmError
from engine.ids import RunId
from engine.operations import Operation, OperationRegistry, load_registry
from engine.workers import start_run
from mfm_tui.controller import read_only_reason
from mfm_tui.glyphs import Glyphs
from mfm_tui.messages import ErrorReported, RunLaunched
from mfm_tui.services import services_of
from mfm_tui.widgets.param_form import ParamForm, validate_form

__all__ = ["StartScreen"]


class StartScreen(Screen[None]):
    """Operation list on the left, its description and parameter form on the right.

    A run that starts posts ``RunLaunched``: the app opens it and checks later that its worker took it.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+s", "start", "Start run", priority=True),
        Binding("tab", "app.focus_next", "Next field", show=False),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | escape | Back. |
    | ctrl+s | Start the run. |
    | tab | Next field. |

    In the operation list ``j`` / ``k`` move like down / up, and typing any other character searches (it goes to
    the search box above the list).
    """

    DEFAULT_CSS = """
    StartScreen > #start-title { height: 1; padding: 0 1; text-style: bold; background: $panel; }
    StartScreen #start-left { width: 30; border-right: solid $panel-lighten-2; }
    StartScreen #start-filter { margin: 0 0 1 0; }
    StartScreen #start-ops { height: 1fr; border: none; }
    StartScreen #start-right { width: 1fr; padding: 0 1; }
    StartScreen #start-desc { height: auto; margin-bottom: 1; }
    StartScreen #start-status { height: auto; color: $text-muted; }
    """

    def __init__(
        self,
        registry: OperationRegistry | None = None,
        *,
        op_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        rerun_of: str | None = None,
    ) -> None:
        super().__init__()
        self._registry = registry
        self.initial_op = op_id
        self.initial_params = dict(params) if params is not None else None
        """Re-run with edited parameters: the form of ``op_id`` starts with these values (a run's manifest's)."""
        self.rerun_of = rerun_of
        self.ops: list[Operation] = []
        self.op: Operation | None = None
        self.started: RunId | None = None

    @property
    def registry(self) -> OperationRegistry:
        if self._registry is None:
            reg = services_of(self.app).registry
            self._registry = reg if reg is not None else load_registry()
        return self._registry

    def compose(self) -> ComposeResult:
        title = "Start a run" if self.rerun_of is None else f"Re-run {self.initial_op} of run {self.rerun_of[:8]}"
        yield Static(title + ("" if self.rerun_of is None else ": edit its parameters, ctrl+s"), id="start-title")
        with Horizontal():
            with Vertical(id="start-left"):
                yield Input(placeholder="search operations", id="start-filter", compact=True, select_on_focus=False)
                yield OptionList(id="start-ops")
            with VerticalScroll(id="start-right"):
                yield Static(id="start-desc")
                yield Vertical(id="start-form-box")
                yield Static("", id="start-status")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#start-filter", Input).cursor_blink = False
        self.ops = self.registry.operations()
        self._fill_list("")
        olist = self.query_one("#start-ops", OptionList)
        if self.initial_op is not None:
            for i, op in enumerate(self._shown):
                if str(op.op_id) == self.initial_op:
                    olist.highlighted = i
        olist.focus()
        await self._show_selected()

    # ------------------------------------------------------------------ list

    def _fill_list(self, query: str) -> None:
        words = query.lower().split()
        self._shown = [op for op in self.ops if all(w in f"{op.op_id} {op.description}".lower() for w in words)]
        olist = self.query_one("#start-ops", OptionList)
        olist.clear_options()
        olist.add_options([Option(str(op.op_id), id=str(op.op_id)) for op in self._shown])
        if self._shown:
            olist.highlighted = 0

    def on_key(self, event: events.Key) -> None:
        olist = self.query_one("#start-ops", OptionList)
        if not olist.has_focus:
            return
        if event.key in ("j", "k"):
            event.stop()
            if event.key == "j":
                olist.action_cursor_down()
            else:
                olist.action_cursor_up()
        elif event.is_printable and event.character and not event.character.isspace():
            event.stop()  # type-to-search: the character starts (or continues) the search
            box = self.query_one("#start-filter", Input)
            box.value += event.character
            box.cursor_position = len(box.value)
            box.focus()

    @on(Input.Changed, "#start-filter")
    async def _filter(self, event: Input.Changed) -> None:
        self._fill_list(event.value)
        await self._show_selected()

    @on(Input.Submitted, "#start-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one("#start-ops", OptionList).focus()

    @on(OptionList.OptionHighlighted, "#start-ops")
    async def _highlighted(self) -> None:
        await self._show_selected()

    @on(OptionList.OptionSelected, "#start-ops")
    async def _selected(self) -> None:
        await self._show_selected()
        for form in self.query(ParamForm):
            form.focus_first()

    async def _show_selected(self) -> None:
        olist = self.query_one("#start-ops", OptionList)
        index = olist.highlighted
        op = self._shown[index] if index is not None and 0 <= index < len(self._shown) else None
        if op is self.op and op is not None:
            return
        self.op = op
        desc = Text()
        if op is None:
            desc.append("no operation matches", style="bold")
        else:
            desc.append(f"{op.op_id}", style="bold")
            desc.append(f"  version {op.version}\n")
            desc.append(op.description.strip())
        self.query_one("#start-desc", Static).update(desc)
        box = self.query_one("#start-form-box", Vertical)
        await box.remove_children()
        if op is not None:
            form = ParamForm(op, ascii_only=services_of(self.app).ascii_only, id="start-form")
            await box.mount(form)
            if self.initial_params is not None and str(op.op_id) == self.initial_op:
                form.prefill(self.initial_params)
        self.query_one("#start-status", Static).update("enter on an operation edits its parameters   ctrl+s start")

    # ------------------------------------------------------------------ start

    @on(ParamForm.Submitted)
    def _form_submitted(self) -> None:
        self.action_start()

    def set_glyphs(self, glyphs: Glyphs) -> None:
        """The app's theme changed: the form marks errors in ASCII or not."""
        for form in self.query(ParamForm):
            form.ascii_only = glyphs.ascii

    def action_start(self) -> None:
        reason = read_only_reason(services_of(self.app))
        if reason is not None:
            self.notify(reason, severity="warning", timeout=4)
            return
        if self.op is None:
            self.notify("choose an operation first", timeout=3)
            return
        form = self.query_one(ParamForm)
        raw, errors = validate_form(self.op, form.values())
        form.touched.update(form.values())
        form.show_errors(errors)
        if errors:
            self.query_one("#start-status", Static).update(
                Text(f"{len(errors)} invalid parameter(s): fix them, then ctrl+s", style="bold")
            )
            return
        self.query_one("#start-status", Static).update("starting")
        self.run_worker(self._start(self.op, raw), group="start", exclusive=True, exit_on_error=False)

    async def _start(self, op: Operation, raw: dict[str, Any]) -> None:
        services = services_of(self.app)
        try:
            prepared = await start_run(
                services.store, self.registry, str(op.op_id), raw, ops_modules=services.ops_modules
            )
        except MfmError as exc:
            details = exc.info.details if isinstance(exc.info.details, dict) else {}
            if exc.info.code == "invalid_params" and details.get("errors"):
                _raw, errors = validate_form(op, self.query_one(ParamForm).values())
                self.query_one(ParamForm).show_errors(errors)
            self.query_one("#start-status", Static).update(Text(f"[{exc.info.code}] {exc.info.message}", style="bold"))
            services.post_message(ErrorReported(exc.info.code, exc.info.message, title="Cannot start"))
            return
        except OSError as exc:
            message = f"the worker could not be started: {exc}"
            self.query_one("#start-status", Static).update(message)
            services.post_message(ErrorReported("worker_spawn_failed", message, title="Cannot start"))
            return
        self.started = prepared.run_id
        with contextlib.suppress(Exception):
            await services.sync_store()
        self.dismiss(None)
        services.post_message(RunLaunched(prepared.run_id))

    def action_back(self) -> None:
        self.dismiss(None)
