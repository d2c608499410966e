"""``RunLoader``: one run's events and model for the run screen, without a widget in sight.

It opens the run's events (the events file when the store keeps one, its tail readable at once; else the store's
``read_range``), adopts a folded model (manifest, plan shape, lease, cancel flag, the lines that arrived meanwhile)
and picks up appended events (``poll``). The screen owns it and runs the slow steps (index, fold) in its Textual
workers; the loader only reads and folds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.artifacts import read_canonical_json
from engine.config import RunManifest
from engine.errors import ErrorCategory, ErrorInfo, MfmError
from engine.events import EventEnvelope, decode_envelope
from engine.ids import ArtifactId, RunId
from engine.stores import CancelRequest
from mfm_tui.log_index import FileLogSource, ListLogSource, LogSource
from mfm_tui.run_model import LeaseStatus, PlanShape, RunModel

__all__ = ["ADOPT_GAP", "RunLoader", "events_path_of"]

ADOPT_GAP = 5000
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


class RunLoader:
    """The events and the model of one run (see the module docstring); ``model`` is shown once ``ready``."""

    def __init__(
        self,
        run_id: RunId,
        *,
        store: Any = None,
        plan_resolver: Callable[[RunManifest], PlanShape | None] | None = None,
        lease_probe: Callable[[RunId], LeaseStatus] | None = None,
    ) -> None:
        self.run_id = run_id
        self.store = store
        self.plan_resolver = plan_resolver
        self.lease_probe = lease_probe
        self.crash_loop_limit: int | None = None
        """The app watcher's K (``engine.workers.max_orphan_recoveries``), given to the adopted model."""
        self.model = RunModel(run_id)
        self.source: LogSource = ListLogSource()
        self.ready = False
        """Whether ``model`` has been adopted (folded, with its manifest and lease)."""
        self.load_error: tuple[str, str] | None = None
        """``(code, message)`` when the run cannot be read at all."""
        self.cancel_request: CancelRequest | None = None
        """The operator's cancel request (the store's ``ControlStore``: when, and the reason naming who)."""
        self._polling = False

    # ------------------------------------------------------------------ opening

    def open_file(self) -> FileLogSource | None:
        """The events file as the source (``None``: the store keeps no file); unreadable → ``run_unreadable``."""
        path = events_path_of(self.store, self.run_id)
        if path is None:
            return None
        try:
            src = FileLogSource(path)
        except OSError as exc:
            raise MfmError(
                ErrorInfo.new("run_unreadable", f"cannot read {path}: {exc}", category=ErrorCategory.UNKNOWN)
            ) from None
        self.source = src
        return src

    async def read_from_store(self) -> list[EventEnvelope]:
        """Every event through the store (no events file); they become the source. Store errors raise."""
        envs: list[EventEnvelope] = await self.store.events.read_range(self.run_id, 1)
        self.source = ListLogSource(envs)
        return envs

    async def adopt(self, model: RunModel) -> None:
        """Give the model its manifest, plan shape, lease and cancel flag and the lines folded meanwhile; it is
        ``model`` from now on."""
        await self.adopt_manifest(model)
        if self.crash_loop_limit is not None:
            model.set_crash_loop_limit(self.crash_loop_limit)
        await self.refresh_lease(model)
        # Lines that arrived while folding.
        if isinstance(self.source, FileLogSource):
            model.apply(self.decode_range(model.last_seq, len(self.source)))
        self.model = model
        self.ready = True

    async def adopt_manifest(self, model: RunModel) -> None:
        """Load the run's manifest and its plan shape into ``model`` (once its ``RunStarted`` is known)."""
        if model.manifest_id is not None and model.manifest is None:
            try:
                raw = await read_canonical_json(self.store.artifacts, ArtifactId(model.manifest_id))
                manifest = RunManifest.model_validate(raw)
            except Exception as exc:  # the graph still shows the states seen in events
                model.anomalies.append(f"manifest unreadable: {exc}"[:200])
            else:
                resolver = self.plan_resolver
                shape: Any = None
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

    async def refresh_lease(self, model: RunModel) -> None:
        """The run's lease (worker alive?) and whether a cancel was requested."""
        probe = self.lease_probe
        if probe is not None:
            try:
                model.set_lease(probe(self.run_id))
            except Exception:
                model.set_lease(LeaseStatus.UNKNOWN)
        cancel = getattr(self.store.events, "cancel_request", None)
        if cancel is not None:
            with contextlib.suppress(Exception):
                request = await cancel(self.run_id)
                self.cancel_request = request if isinstance(request, CancelRequest) else None
                model.set_cancel_requested(request is not None)

    def decode_range(self, start: int, stop: int) -> list[EventEnvelope]:
        """The envelopes of source lines ``start`` to ``stop`` (a corrupt line is an anomaly of the model)."""
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

    # ------------------------------------------------------------------ live updates

    async def poll(self) -> int:
        """Pick up appended events into the source and the model; the number of lines added (store errors raise)."""
        if self._polling or self.load_error is not None:
            return 0
        self._polling = True
        try:
            added = 0
            if isinstance(self.source, FileLogSource):
                before = len(self.source)
                added = self.source.refresh()
                if added and self.ready:
                    self.model.apply(self.decode_range(before, len(self.source)))
            elif isinstance(self.source, ListLogSource):
                head = await self.store.events.head_seq(self.run_id)
                if head > len(self.source):
                    envs = await self.store.events.read_range(self.run_id, len(self.source) + 1)
                    added = self.source.extend(envs)
                    if self.ready:
                        self.model.apply(envs)
            if added:
                if self.ready and self.model.manifest is None and self.model.manifest_id is not None:
                    # Opened before RunStarted landed (a run just started): now its manifest and plan shape
                    # are known, so the graph can show the whole plan instead of the states seen so far.
                    await self.adopt_manifest(self.model)
                if self.model.status.is_finished is False:
                    await self.refresh_lease(self.model)
            return added
        finally:
            self._polling = False
