"""App-wide messages (past tense: they say what happened; screens and the app react).

The store watcher runs in a Textual worker and only ever *posts* these; it never touches widgets.
The app forwards ``StoreChanged``, ``RunsUpdated`` and ``CancelRequested`` to every screen on its stack, so a
screen (runs list, run screen) handles them with ``on_store_changed`` / ``on_runs_updated`` /
``on_cancel_requested``.

The controller (``mfm_tui.controller``) never pushes a screen: it posts ``ActionProposed`` (the app asks for
confirmation), ``ReplayStarted``, ``RunResumed``, ``DiffLoaded`` and ``ErrorReported``, and the app shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from textual.message import Message

from engine.ids import RunId

if TYPE_CHECKING:
    from mfm_tui.controller.plans import ActionRequest

__all__ = [
    "ActionProposed",
    "CancelRequested",
    "DiffLoaded",
    "ErrorReported",
    "ReplayStarted",
    "RunLaunched",
    "RunResumed",
    "RunSelected",
    "RunsUpdated",
    "StoreChanged",
]


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


class ActionProposed(Message):
    """The controller prepared an action (cancel, resume, replay) that the operator must confirm.

    The app shows the confirmation dialog; confirmed, it runs ``mfm_tui.controller.execute`` in a worker.
    """

    def __init__(self, request: ActionRequest) -> None:
        super().__init__()
        self.request = request


class CancelRequested(Message, bubble=False):
    """A cancel was requested for these runs (the run screen shows "cancelling" until ``RunCompleted`` lands).

    It does not bubble: the app forwards it to every screen, and a screen's copy must not come back to the app.
    """

    def __init__(self, run_ids: frozenset[RunId]) -> None:
        super().__init__()
        self.run_ids = run_ids


class RunResumed(Message):
    """A resume was started; ``run_id`` is the run that goes on (a failed run's recovery run): the app shows it."""

    def __init__(self, run_id: RunId) -> None:
        super().__init__()
        self.run_id = run_id


class RunLaunched(Message):
    """The start form launched a run: the app opens it and checks later that its worker took it."""

    def __init__(self, run_id: RunId) -> None:
        super().__init__()
        self.run_id = run_id


class ReplayStarted(Message):
    """A replay of ``source_run_id`` was started as ``replay_run_id``: the app shows its progress and verdict."""

    def __init__(self, source_run_id: RunId, replay_run_id: RunId) -> None:
        super().__init__()
        self.source_run_id = source_run_id
        self.replay_run_id = replay_run_id


class DiffLoaded(Message):
    """The documents of a diff were read: ``sections`` are ``(name, old, new)``; the app shows the diff."""

    def __init__(self, title: str, sections: Sequence[tuple[str, Any, Any]], labels: tuple[str, str]) -> None:
        super().__init__()
        self.title = title
        self.sections = sections
        self.labels = labels
