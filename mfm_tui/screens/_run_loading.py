"""RunScreen's loading and live updates: open the run's events (file tail first, offset index and fold in background
threads, or ``read_range`` for stores without files), adopt the folded model (manifest, plan shape, lease, cancel flag)
and pick up appended events. ``mfm_tui.screens.run`` re-exports ``events_path_of``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work

from engine._artifacts import read_canonical_json
from engine.config import RunManifest
from engine.errors import MfmError
from engine.events import EventEnvelope, decode_envelope
from engine.ids import ArtifactId, RunId
from mfm_tui.log_index import FileLogSource, ListLogSource, LogSource, fold_file
from mfm_tui.run_model import LeaseStatus, PlanShape, RunModel
from mfm_tui.widgets.event_log import EventLog
from mfm_tui.widgets.run_header import RunHeader

if TYPE_CHECKING:
    from textual.screen import Screen

    _Base = Screen[None]
else:
    _Base = object

_ADOPT_GAP = 5000
"""Use the app watcher's model of the run when it is at most this many events behind the file."""


def events_path_of(store: Any, run_id: str) -> Path | None:
    """The run's JSONL event file if the store keeps one (``events_path`` on the store or its ``.events``)."""
    for owner in (store, getattr(store, "events", None)):
        fn = getattr(owner, "events_path", None)
        if callable(fn):
            try:
                path = Path(fn(run_id))
            except Exception:
                return None
            return path if path.is_file() else None
    return None


class RunLoadingMixin(_Base):
    """Loading, folding and polling the run's events; mixed into ``RunScreen`` (which owns the state it uses)."""

    run_id: RunId
    model: RunModel
    source: LogSource
    load_error: tuple[str, str] | None
    _model_ready: bool
    _polling: bool
    _ticks: int
    _plan_resolver: Callable[[RunManifest], PlanShape | None] | None
    _lease_probe: Callable[[RunId], LeaseStatus] | None

    if TYPE_CHECKING:

        @property
        def store(self) -> Any: ...

        def _app_attr(self, name: str) -> Any: ...

        def _render_all(self) -> None: ...

    # ------------------------------------------------------------------ loading

    def _open(self) -> None:
        path = events_path_of(self.store, self.run_id)
        if path is not None:
            try:
                src = FileLogSource(path)
            except OSError as exc:
                self._fail("run_unreadable", f"cannot read {path}: {exc}")
                return
            self.source = src
            self.query_one(EventLog).set_source(src)
            shared = self._shared_model()
            if shared is not None and len(src) - shared.last_seq <= _ADOPT_GAP:
                self._index_file(src)
                self.run_worker(self._adopt_model(shared), group="run-adopt")
            else:
                self._fold_file(src)
        else:
            self.run_worker(self._load_from_store(), exclusive=True, group="run-load")

    async def _load_from_store(self) -> None:
        try:
            envs = await self.store.events.read_range(self.run_id, 1)
        except MfmError as exc:
            self._fail(exc.info.code, exc.info.message)
            return
        src = ListLogSource(envs)
        self.source = src
        model = self._shared_model() or RunModel(self.run_id)
        model.apply(envs)
        await self._adopt_model(model)
        self.query_one(EventLog).set_source(src)

    def _shared_model(self) -> RunModel | None:
        """The app watcher's model of this run (already folded), when it has one."""
        models = getattr(getattr(self.app, "watcher", None), "models", None)
        model = models.get(self.run_id) if isinstance(models, dict) else None
        return model if isinstance(model, RunModel) and model.last_seq > 0 else None

    @work(thread=True, exclusive=True, group="run-index")
    def _index_file(self, src: FileLogSource) -> None:
        src.build_index()
        self.app.call_from_thread(self.query_one(EventLog).index_ready)

    @work(thread=True, exclusive=True, group="run-fold")
    def _fold_file(self, src: FileLogSource) -> None:
        """Index the whole file, then fold it into a fresh model (off the UI thread).

        See ``mfm_tui.log_index.fold_file``: only the lines the model needs are decoded.
        """
        src.build_index()
        self.app.call_from_thread(self.query_one(EventLog).index_ready)
        model = fold_file(src, self.run_id)
        self.app.call_from_thread(self._adopt_model_sync, model)

    def _adopt_model_sync(self, model: RunModel) -> None:
        self.run_worker(self._adopt_model(model), group="run-adopt")

    async def _adopt_model(self, model: RunModel) -> None:
        """Give the model its manifest, plan shape, lease and cancel flag, then show it."""
        await self._adopt_manifest(model)
        await self._refresh_lease(model)
        # Lines that arrived while folding.
        if isinstance(self.source, FileLogSource):
            model.apply(self._decode_range(model.last_seq, len(self.source)))
        self.model = model
        self._model_ready = True
        self._render_all()

    async def _adopt_manifest(self, model: RunModel) -> None:
        """Load the run's manifest and its plan shape into ``model`` (once its ``RunStarted`` is known)."""
        if model.manifest_id is not None and model.manifest is None:
            try:
                raw = await read_canonical_json(self.store.artifacts, ArtifactId(model.manifest_id))
                manifest = RunManifest.model_validate(raw)
            except Exception as exc:  # the graph still shows the states seen in events
                model.anomalies.append(f"manifest unreadable: {exc}"[:200])
            else:
                resolver = self._plan_resolver or self._app_attr("plan_resolver")
                shape = None
                if resolver is not None:
                    try:
                        shape = resolver(manifest)
                    except Exception as exc:
                        model.anomalies.append(f"plan unavailable: {exc}"[:200])
                if shape is not None and not isinstance(shape, PlanShape):
                    shape = PlanShape.from_plan(shape) if hasattr(shape, "graph") else None
                if shape is not None:
                    model.set_plan(shape)
                model.set_manifest(manifest)

    async def _refresh_lease(self, model: RunModel) -> None:
        probe = self._lease_probe or self._app_attr("lease_probe")
        if probe is not None:
            try:
                model.set_lease(probe(self.run_id))
            except Exception:
                model.set_lease(LeaseStatus.UNKNOWN)
        cancel = getattr(self.store.events, "cancel_request", None)
        if cancel is not None:
            with contextlib.suppress(Exception):
                model.set_cancel_requested(await cancel(self.run_id) is not None)

    def _decode_range(self, start: int, stop: int) -> list[EventEnvelope]:
        out: list[EventEnvelope] = []
        for i in range(start, stop):
            raw = self.source.raw(i)
            if raw is None:
                break
            try:
                out.append(decode_envelope(raw))
            except MfmError as exc:
                self.model.anomalies.append(f"[{exc.info.code}] line {i + 1}")
        return out

    def _fail(self, code: str, message: str) -> None:
        self.load_error = (code, message)
        self.query_one(RunHeader).update(f"{self.run_id}  [{code}] {message}")

    # ------------------------------------------------------------------ live updates

    async def _timed_poll(self) -> None:
        """The timer: every 100 ms while the run is live, once a second once it has finished."""
        self._ticks += 1
        if self._model_ready and self.model.status.is_finished and self._ticks % 10:
            return
        await self.poll()

    async def poll(self) -> None:
        """Pick up appended events (the timer calls it; tests call it directly)."""
        if self._polling or self.load_error is not None:
            return
        self._polling = True
        try:
            added = 0
            if isinstance(self.source, FileLogSource):
                before = len(self.source)
                added = self.source.refresh()
                if added and self._model_ready:
                    self.model.apply(self._decode_range(before, len(self.source)))
            elif isinstance(self.source, ListLogSource):
                head = await self.store.events.head_seq(self.run_id)
                if head > len(self.source):
                    envs = await self.store.events.read_range(self.run_id, len(self.source) + 1)
                    added = self.source.extend(envs)
                    if self._model_ready:
                        self.model.apply(envs)
            if added:
                if self._model_ready and self.model.manifest is None and self.model.manifest_id is not None:
                    # Opened before RunStarted landed (a run just started): now its manifest and plan shape
                    # are known, so the graph can show the whole plan instead of the states seen so far.
                    await self._adopt_manifest(self.model)
                if self.model.status.is_finished is False:
                    await self._refresh_lease(self.model)
                self.query_one(EventLog).lines_appended(added)
                self._render_all()
        except MfmError as exc:
            self.notify(f"[{exc.info.code}] {exc.info.message}", severity="error")
        finally:
            self._polling = False
