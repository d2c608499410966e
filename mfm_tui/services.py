"""What the screens and the controller may ask of the app: ``AppServices``, a small protocol.

Screens and the controller are typed against this protocol, never against ``App`` with ``Any`` attributes; ``MfmApp``
satisfies it (``make_app`` builds one). A screen reads it with ``services_of(self.app)``.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from textual.app import App
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.worker import Worker

from engine import Clock
from mfm_tui.run_model import LeaseProbe, PlanShape

if TYPE_CHECKING:
    from engine.config import RunManifest
    from engine.operations import OperationRegistry
    from mfm_tui.store_watcher import StoreWatcher, WatchUpdate

__all__ = ["AppServices", "services_of"]


@runtime_checkable
class AppServices(Protocol):
    """The app's services, named like ``make_app``'s parameters."""

    store: Any
    """The store (``FsStore``, ``MemoryStore``, ``PostgresStore``…): ``.events``, ``.artifacts``."""
    clock: Clock
    """Wall-clock milliseconds (frozen in tests and snapshots)."""
    read_only: bool
    """Watching only: nothing may be started, cancelled, resumed or replayed."""
    watch_store: bool
    """Whether the store is watched (``False`` in tests: they call ``sync_store``)."""
    registry: OperationRegistry | None
    """The operations that can be started (``None``: loaded on demand)."""
    ops_modules: tuple[str, ...]
    """``--ops`` modules, handed to the workers the controller spawns."""
    watcher: StoreWatcher
    """The store watcher; ``watcher.models`` holds every run's model."""
    lease_probe: LeaseProbe | None
    """``run_id -> LeaseStatus`` (a filesystem store's lease files), or ``None``."""

    @property
    def ascii_only(self) -> bool:
        """Whether the theme draws with ASCII only."""
        ...

    def plan_resolver(self, manifest: RunManifest) -> PlanShape | None:
        """The plan shape of a run's manifest (``None`` when unknown); never raises."""
        ...

    async def sync_store(self) -> WatchUpdate:
        """Refresh from the store now; returns what changed."""
        ...

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """A toast."""
        ...

    def post_message(self, message: Message) -> bool:
        """Post a message to the app (the controller's results: ``mfm_tui.messages``)."""
        ...

    def run_worker(
        self,
        work: Coroutine[Any, Any, Any],
        name: str | None = "",
        group: str = "default",
        description: str = "",
        exit_on_error: bool = True,
        start: bool = True,
        exclusive: bool = False,
        thread: bool = False,
    ) -> Worker[Any]:
        """Run ``work`` in a Textual worker of the app (it outlives the screen that asked)."""
        ...


def services_of(app: App[Any]) -> AppServices:
    """``app`` as ``AppServices``; every mfm screen runs in an ``MfmApp`` (``make_app``)."""
    if not isinstance(app, AppServices):
        raise TypeError(f"{type(app).__name__} does not offer the mfm app's services (build the app with make_app)")
    return app
