"""The command palette's start entries: "Start demo_flaky (s)", one per operation, opening the start form on it.

Every other action is in the palette through its key binding (the app lists the current screen's bindings with
their keys); starting gets one entry per operation because it is what an operator searches for by name. The
controls themselves (cancel, resume, replay, diff) are in ``mfm_tui.controller``.
"""

from __future__ import annotations

from functools import partial

from textual.command import Hit, Hits, Provider

from mfm_tui.controller import read_only_reason
from mfm_tui.screens.start import StartScreen
from mfm_tui.services import services_of

__all__ = ["StartCommands"]


class StartCommands(Provider):
    """One palette entry per operation: "Start OP (s)" opens the start form on OP."""

    async def search(self, query: str) -> Hits:
        services = services_of(self.app)
        registry = services.registry
        if registry is None or read_only_reason(services) is not None:
            return
        matcher = self.matcher(query)
        for op in registry.operations():
            text = f"Start {op.op_id} (s)"
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), partial(self._open_start, str(op.op_id)), help=op.summary)

    def _open_start(self, op_id: str) -> None:
        self.app.push_screen(StartScreen(op_id=op_id))
