"""RunScreen's actions on the run: the controller's cancel / resume / replay / diff (``mfm_tui.commands``) and the
artifacts of the selected state and of the run (``a``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.errors import MfmError
from engine.events import DomainEvent, decode_envelope
from engine.ids import RunId
from mfm_tui import commands
from mfm_tui.log_index import LogSource
from mfm_tui.run_model import RunModel
from mfm_tui.screens.artifact import ArtifactEntry, ArtifactScreen

if TYPE_CHECKING:
    from textual.screen import Screen

    _Base = Screen[None]
else:
    _Base = object


class RunActionsMixin(_Base):
    """Controller actions and artifact entries; mixed into ``RunScreen`` (which owns the state it uses)."""

    run_id: RunId
    model: RunModel
    source: LogSource
    selected: str | None

    if TYPE_CHECKING:

        @property
        def store(self) -> Any: ...

        @property
        def view_model(self) -> RunModel: ...

    def action_cancel_run(self) -> None:
        commands.cancel_runs(self.app, [self.run_id], current=self.model)

    def action_resume_run(self) -> None:
        commands.resume_runs(self.app, [self.run_id], current=self.model)

    def action_replay_run(self) -> None:
        commands.replay_run_of(self.app, self.run_id, current=self.model)

    def action_diff_state(self) -> None:
        commands.diff_state(self.app, self.view_model, self.selected)

    def artifact_entries(self) -> list[ArtifactEntry]:
        """The selected state's snapshots and facts first, then the run's manifest, snapshots and outputs."""
        m = self.view_model
        out: list[ArtifactEntry] = []
        seen: set[str] = set()

        def add(label: str, aid: str | None, kind: str) -> None:
            if aid and aid not in seen:
                seen.add(aid)
                out.append(ArtifactEntry(label, aid, kind))

        sv = m.states.get(self.selected) if self.selected else None  # type: ignore[call-overload]
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
        for i in range(max(0, len(self.source) - 5000), len(self.source)):
            raw = self.source.raw(i)
            if raw is None or b'"artifact_written"' not in raw:
                continue
            try:
                ev = decode_envelope(raw).event
            except MfmError:
                continue
            if isinstance(ev, DomainEvent) and isinstance(ev.payload, dict):
                add(f"output seq {i + 1}", str(ev.payload.get("artifact_id") or ev.payload_ref or ""), "Output")
        return out

    def action_artifacts(self) -> None:
        self.app.push_screen(ArtifactScreen(self.store, self.artifact_entries()))
