"""The diff screen (JSON-aware, one section per document pair) and the replay progress / verdict dialog."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Static

from engine.ids import RunId
from engine.workers import read_verdict
from mfm_tui import controller
from mfm_tui.json_diff import diff_json, summarize
from mfm_tui.messages import RunSelected
from mfm_tui.run_model import RunModel
from mfm_tui.services import services_of
from mfm_tui.widgets.diff_view import DiffView

__all__ = ["DiffScreen", "ReplayScreen"]


class DiffScreen(Screen[None]):
    """``DiffScreen(title, [(name, old, new), …], labels=("base", "result"))``; ``esc`` goes back."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "Back")]
    """
    | Key(s) | Description |
    | :- | :- |
    | escape | Back. |
    """

    DEFAULT_CSS = """
    DiffScreen > #diff-title { height: 1; padding: 0 1; text-style: bold; background: $panel; }
    DiffScreen > #diff-scroll { height: 1fr; }
    """

    def __init__(self, title: str, sections: Sequence[tuple[str, Any, Any]], *, labels: tuple[str, str]) -> None:
        super().__init__()
        self.title_text = title
        self.sections = list(sections)
        self.labels = labels

    def compose(self) -> ComposeResult:
        ascii_only = services_of(self.app).ascii_only
        total = [c for _, old, new in self.sections for c in diff_json(old, new)]
        arrow = "->" if ascii_only else "→"
        yield Static(
            f"diff {self.title_text}   {self.labels[0]} {arrow} {self.labels[1]}   {summarize(total)}", id="diff-title"
        )
        with VerticalScroll(id="diff-scroll"):
            for i, (name, old, new) in enumerate(self.sections):
                yield DiffView(name, old, new, ascii_only=ascii_only, id=f"diff-{i}")
        yield Footer()


class ReplayScreen(ModalScreen[None]):
    """Replay of ``source`` as ``replay``: progress until the verdict lands, then the verdict.

    ``enter`` opens the replay run; when diverged, ``d`` diffs the diverged state's result (source vs replay). The
    verdict is read with ``engine.workers.read_verdict`` (the same reader as ``mfm replay --wait``), or from
    ``verdict_loader`` (tests).
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Close"),
        Binding("enter", "open_replay", "Open replay run"),
        Binding("d", "diff_diverged", "Diff diverged state"),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | escape | Close (the replay keeps going). |
    | enter | Open the replay run. |
    | d | Diverged: diff the diverged state's result, source vs replay. |
    """

    # app-level rules (CSS, not DEFAULT_CSS): the see-through backdrop must beat `Screen { background }` of app.tcss
    CSS = """
    ReplayScreen { align: center middle; background: $background 60%; }
    ReplayScreen > #replay-box {
        width: 76; max-width: 95%; height: auto; padding: 1 2;
        border: round $primary; border-title-color: $primary; border-title-style: bold; background: $surface;
    }
    ReplayScreen.-deterministic > #replay-box { border: round $success; border-title-color: $success; }
    ReplayScreen.-diverged > #replay-box { border: round $error; border-title-color: $error; }
    #replay-body { height: auto; }
    #replay-hint { height: 1; margin-top: 1; color: $text-muted; }
    App.-theme-mfm-ascii ReplayScreen > #replay-box { border: ascii $foreground; }
    """

    def __init__(
        self,
        source: RunId,
        replay: RunId,
        *,
        verdict_loader: Callable[[], dict[str, Any] | None] | None = None,
        poll: bool = True,
    ) -> None:
        super().__init__()
        self.source = source
        self.replay = replay
        self._loader = verdict_loader
        self._poll = poll
        self.verdict: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="replay-box") as box:
            box.border_title = f"Replay of run {self.source[:8]}"
            yield Static(id="replay-body")
            yield Static("", id="replay-hint")

    async def on_mount(self) -> None:
        await self.refresh_status()
        if self._poll:
            self.set_interval(0.2, self.refresh_status)

    def _model(self, run_id: RunId) -> RunModel | None:
        return services_of(self.app).watcher.models.get(run_id)

    async def _read_verdict(self) -> dict[str, Any] | None:
        if self._loader is not None:
            return self._loader()
        try:
            return await read_verdict(services_of(self.app).store, self.replay)
        except Exception:  # a store without run folders or a queue: no verdict to show yet
            return None

    async def refresh_status(self) -> None:
        """Read the verdict (and the replay run's progress); tests call it directly."""
        if self.verdict is None:
            self.verdict = await self._read_verdict()
        ell = "..." if services_of(self.app).ascii_only else "…"
        text = Text()
        text.append(f"source  run {self.source}\n")
        text.append(f"replay  run {self.replay}\n\n")
        model = self._model(self.replay)
        if self.verdict is None:
            progress = f"{model.done}/{model.total} states, seq {model.last_seq}" if model else f"starting{ell}"
            text.append(f"replaying{ell} {progress}", style="bold")
            self.query_one("#replay-hint", Static).update("enter open the replay run   esc close (it keeps going)")
        else:
            verdict = str(self.verdict.get("verdict", "?"))
            self.set_class(verdict == "deterministic", "-deterministic")
            self.set_class(verdict != "deterministic", "-diverged")
            if verdict == "deterministic":
                text.append("deterministic", style="bold")
                text.append(f": same final snapshot {str(self.verdict.get('replay_final') or '')[:16]}{ell}\n")
                hint = "enter open the replay run   esc close"
            else:
                state = self.verdict.get("diverged_state")
                text.append("diverged", style="bold")
                text.append(f" at state {state}\n" if state else " (final outcome differs)\n")
                text.append(f"source final  {str(self.verdict.get('source_final') or '-')[:24]}\n")
                text.append(f"replay final  {str(self.verdict.get('replay_final') or '-')[:24]}\n")
                hint = "d diff the diverged state   enter open the replay run   esc close"
            phase = self.verdict.get("phase")
            if phase:
                text.append(f"replay run ended {phase}")
            self.query_one("#replay-hint", Static).update(hint)
        self.query_one("#replay-body", Static).update(text)

    def action_open_replay(self) -> None:
        self.dismiss(None)
        self.app.post_message(RunSelected(self.replay))

    def action_diff_diverged(self) -> None:
        state = (self.verdict or {}).get("diverged_state")
        if not state:
            self.notify("no diverged state to diff", timeout=3)
            return
        src, rep = self._model(self.source), self._model(self.replay)
        if src is None or rep is None:
            self.notify("the runs are still loading", timeout=3)
            return
        controller.diff_state_between(services_of(self.app), src, rep, str(state))
