"""App-wide messages (past tense: they say what happened; screens and the app react).

The store watcher runs in a Textual worker and only ever *posts* these; it never touches widgets.
The app forwards ``StoreChanged`` and ``RunsUpdated`` to every screen on its stack, so a screen
(runs list, run screen) handles them with ``on_store_changed`` / ``on_runs_updated``.
"""

from __future__ import annotations

from textual.message import Message

from engine.ids import RunId

__all__ = ["ErrorReported", "RunSelected", "RunsUpdated", "StoreChanged"]


class RunSelected(Message):
    """The user chose a run (``enter`` on the runs list): the app opens its run screen."""

    def __init__(self, run_id: RunId) -> None:
        super().__init__()
        self.run_id = run_id


class StoreChanged(Message):
    """These runs' event streams grew (new envelopes past what was read before)."""

    def __init__(self, run_ids: frozenset[RunId]) -> None:
        super().__init__()
        self.run_ids = run_ids


class RunsUpdated(Message):
    """These runs' view models changed (events, lease, cancel request, manifest or a read error).

    The models themselves live in ``app.watcher.models``; ``initial`` marks the first full load.
    """

    def __init__(
        self,
        run_ids: frozenset[RunId],
        *,
        initial: bool = False,
        loaded: bool = True,
        store_error: tuple[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.run_ids = run_ids
        self.initial = initial
        self.loaded = loaded
        """Whether the first full load has finished (until then the list is still filling)."""
        self.store_error = store_error
        """``(code, message)`` while the store itself cannot be read."""


class ErrorReported(Message):
    """Something failed that the user must see: shown in an error dialog (code + message), never a traceback."""

    def __init__(self, code: str, message: str, *, title: str = "Error", run_id: RunId | None = None) -> None:
        super().__init__()
        self.code = code
        self.message = message
        self.title = title
        self.run_id = run_id
