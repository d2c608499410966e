"""Artifact viewer: manifest, context snapshots, fact payloads and outputs as a JSON tree or pretty raw JSON.

Reached with ``a`` from the run screen (the artifacts of the selected state and of the run). Every artifact is read
through the engine's verified canonical-JSON read, so a missing or corrupted artifact shows its ``StorageError`` code
and message in place of the content, never a traceback. An exec fact (a payload with ``exit_code``/``stdout``/
``stderr``) gets Exit, Stdout and Stderr tabs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.syntax import Syntax
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, OptionList, Static, TabbedContent, TabPane
from textual.widgets.option_list import Option

from engine.artifacts import read_canonical_json
from engine.errors import MfmError
from engine.events import DomainEvent, decode_envelope
from engine.ids import ArtifactId
from mfm_tui.clipboard import copy_text
from mfm_tui.log_index import LogSource
from mfm_tui.run_model import RunModel
from mfm_tui.services import services_of
from mfm_tui.widgets.json_tree import JsonTree

__all__ = ["ArtifactEntry", "ArtifactScreen", "exec_parts", "run_artifacts"]

EXEC_KEYS = ("exit_code", "stdout", "stderr")


@dataclass(frozen=True, slots=True)
class ArtifactEntry:
    """One artifact to list: ``label`` (``manifest``, ``result of item_2``, ``fact exec:fetch#1``), id, kind."""

    label: str
    artifact_id: str
    kind: str = "artifact"


def exec_parts(value: Any) -> dict[str, Any] | None:
    """``{exit_code, stdout, stderr}`` (those present) when ``value`` looks like an exec fact, else ``None``."""
    if isinstance(value, dict) and any(k in value for k in EXEC_KEYS):
        return {k: value[k] for k in EXEC_KEYS if k in value}
    return None


def run_artifacts(model: RunModel, state_id: str | None, source: LogSource) -> list[ArtifactEntry]:
    """The state's snapshots and facts first, then the run's manifest, snapshots and outputs (``a`` on a run)."""
    m = model
    out: list[ArtifactEntry] = []
    seen: set[str] = set()

    def add(label: str, aid: str | None, kind: str) -> None:
        if aid and aid not in seen:
            seen.add(aid)
            out.append(ArtifactEntry(label, aid, kind))

    sv = m.states.get(state_id) if state_id else None  # type: ignore[call-overload]
    if sv is not None:
        for fact in sv.facts:
            add(f"fact {fact.key}", fact.payload_id, "FactPayload")
        last = sv.last
        if last is not None:
            add(f"{sv.short_name} result", last.result_snapshot_id, "ContextSnapshot")
            add(f"{sv.short_name} base", last.base_snapshot_id, "ContextSnapshot")
    add("manifest", m.manifest_id, "Manifest")
    add("checkpoint", m.checkpoint_id, "ContextSnapshot")
    add("final snapshot", m.final_snapshot_id, "ContextSnapshot")
    add("initial snapshot", m.initial_snapshot_id, "ContextSnapshot")
    for fact in m.unattributed_facts:  # recorded while several fan-out attempts were open
        add(f"fact {fact.key}", fact.payload_id, "FactPayload")
    for i in range(max(0, len(source) - 5000), len(source)):
        raw = source.raw(i)
        if raw is None or b'"artifact_written"' not in raw:
            continue
        try:
            ev = decode_envelope(raw).event
        except MfmError:
            continue
        if isinstance(ev, DomainEvent) and isinstance(ev.payload, dict):
            add(f"output seq {i + 1}", str(ev.payload.get("artifact_id") or ev.payload_ref or ""), "Output")
    return out


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


class ArtifactScreen(Screen[None]):
    """``ArtifactScreen(store, entries, index=0)``: a list of artifacts (when several) beside the selected one."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("y", "copy_json", "Copy JSON"),
        Binding("Y", "copy_id", "Copy id"),
        Binding("1", "show_tab_at(0)", "1st tab", show=False, tooltip="The first tab (Tree; Exit for an exec fact)"),
        Binding("2", "show_tab_at(1)", "2nd tab", show=False, tooltip="The second tab (Raw; Tree for an exec fact)"),
        Binding("3", "show_tab_at(2)", "3rd tab", show=False, tooltip="The third tab (an exec fact: Raw)"),
        Binding("4", "show_tab_at(3)", "4th tab", show=False, tooltip="The fourth tab (an exec fact: Stdout)"),
        Binding("5", "show_tab_at(4)", "5th tab", show=False, tooltip="The fifth tab (an exec fact: Stderr)"),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | escape | Back. |
    | y | Copy the artifact's JSON (its id when it has none). |
    | Y | Copy the artifact's id. |
    | 1 … 5 | Show the tab at that place (its label carries the digit). Not `t`/`r`: those are time travel and
      resume on the run screen. |
    """

    def __init__(self, store: Any, entries: list[ArtifactEntry], index: int = 0) -> None:
        super().__init__()
        self.store = store
        self.entries = entries
        self.index = max(0, min(index, len(entries) - 1)) if entries else 0
        self.value: Any = None
        self.error: tuple[str, str] | None = None
        self._loaded_id: str | None = None
        self.tab_ids: list[str] = []
        """The shown tabs' ids in order (keys 1 … 5)."""

    def compose(self) -> ComposeResult:
        with Horizontal():
            if len(self.entries) > 1:
                yield OptionList(
                    *(Option(f"{e.label}\n  {e.artifact_id[:12]}…", id=str(i)) for i, e in enumerate(self.entries)),
                    id="artifact-list",
                )
            with Vertical():
                yield Static("", id="artifact-title")
                yield Static("", id="artifact-error", classes="-hidden")
                yield Vertical(id="artifact-body")
        yield Footer()

    def on_mount(self) -> None:
        self.set_class(self.size.width < 100, "-narrow")
        if len(self.entries) > 1:
            olist = self.query_one("#artifact-list", OptionList)
            olist.highlighted = self.index
            olist.border_title = "Artifacts"
        self._load(self.index)

    @on(OptionList.OptionHighlighted, "#artifact-list")
    def _on_pick(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id is not None and int(event.option.id) != self.index:
            self._load(int(event.option.id))

    def _load(self, index: int) -> None:
        if not self.entries:
            self._show_error("no_artifacts", "this run has no artifacts yet")
            return
        self.index = index
        entry = self.entries[index]
        title = Text()
        title.append(f"{entry.label}  ", style="bold")
        title.append(f"{entry.kind}  {entry.artifact_id}")
        self.query_one("#artifact-title", Static).update(title)
        self.run_worker(self._read(entry), exclusive=True, group="artifact-read")

    async def _read(self, entry: ArtifactEntry) -> None:
        try:
            value = await read_canonical_json(self.store.artifacts, ArtifactId(entry.artifact_id))
        except MfmError as exc:
            self._show_error(exc.info.code, exc.info.message)
            return
        except ValueError as exc:  # an id that is not 64 lowercase hex
            self._show_error("artifact_id_invalid", str(exc))
            return
        except Exception as exc:  # the viewer never dies with a traceback
            self._show_error("artifact_read_failed", f"{type(exc).__name__}: {exc}")
            return
        await self._show_value(entry, value)

    def _show_error(self, code: str, message: str) -> None:
        self.error = (code, message)
        self.value = None
        err = self.query_one("#artifact-error", Static)
        err.update(Text.assemble(("cannot show this artifact\n\n", "bold"), (f"[{code}] ", "bold"), message))
        err.remove_class("-hidden")
        body = self.query_one("#artifact-body", Vertical)
        body.remove_children()

    async def _show_value(self, entry: ArtifactEntry, value: Any) -> None:
        self.error = None
        self.value = value
        self._loaded_id = entry.artifact_id
        self.query_one("#artifact-error", Static).add_class("-hidden")
        body = self.query_one("#artifact-body", Vertical)
        await body.remove_children()
        tabs = TabbedContent(id="artifact-tabs")
        await body.mount(tabs)
        parts = exec_parts(value)
        ascii_only = services_of(self.app).ascii_only
        contents: list[tuple[str, Widget, str]] = [
            ("Tree", JsonTree(value, entry.label, ascii_only=ascii_only), "tree"),
            ("Raw", VerticalScroll(Static(_syntax(pretty_json(value)))), "raw"),
        ]
        if parts is not None:
            contents.insert(0, ("Exit", Static(_exit_text(parts)), "exit"))
            for key in ("stdout", "stderr"):
                if key in parts:
                    contents.append((key.capitalize(), VerticalScroll(Static(_stream_text(parts[key]))), key))
        # each label carries the digit that shows it (keys 1 … 5)
        panes = [TabPane(f"{n} {label}", widget, id=tab) for n, (label, widget, tab) in enumerate(contents, start=1)]
        self.tab_ids = [tab for _label, _widget, tab in contents]
        await tabs.add_pane(panes[0])
        for pane in panes[1:]:
            await tabs.add_pane(pane)
        tabs.active = panes[0].id or "tree"

    def action_show_tab(self, tab: str) -> None:
        for tabs in self.query("#artifact-tabs").results(TabbedContent):
            tabs.active = tab

    def action_show_tab_at(self, place: int) -> None:
        if 0 <= place < len(self.tab_ids):
            self.action_show_tab(self.tab_ids[place])

    def action_copy_json(self) -> None:
        if self.value is None:
            self.action_copy_id()
            return
        copy_text(self.app, pretty_json(self.value), "artifact JSON")

    def action_copy_id(self) -> None:
        if self.entries:
            copy_text(self.app, self.entries[self.index].artifact_id, "artifact id")


def _syntax(code: str) -> Syntax:
    return Syntax(code, "json", theme="ansi_dark", word_wrap=True, background_color="default")


def _exit_text(parts: dict[str, Any]) -> Text:
    t = Text()
    code = parts.get("exit_code")
    t.append("exit code  ", style="bold")
    t.append(str(code), style="bold green" if code == 0 else "bold red")
    for key in ("stdout", "stderr"):
        if key in parts:
            v = parts[key]
            size = len(v.encode()) if isinstance(v, str) else len(json.dumps(v))
            t.append(f"\n{key:<9}  {size:,} bytes")
    return t


def _stream_text(value: Any) -> Text:
    if isinstance(value, str):
        return Text(value or "(empty)", style="" if value else "italic")
    return Text(pretty_json(value))
