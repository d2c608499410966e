"""Keeps one ``RunModel`` per run up to date with the store. No Textual here: the app runs
``StoreWatcher.run(emit)`` in a Textual worker and turns each ``WatchUpdate`` into messages.

How changes are found:

* the store's change journal — ``store.events.changes_since(cursor)`` names the runs whose streams
  grew; only those are re-read, each from its last seq (``read_range(run_id, last_seq + 1)``);
* a store that keeps run summaries (``engine.stores.RunSummaries``: the filesystem store) is never read event by
  event: each model is seeded from the run's summary (``RunModel.seed``), so the list costs what it shows, not the
  size of the runs. A summary the store cannot bring up to date cheaply comes back provisional (its first event and
  its tail): the row shows "indexing…" and the whole log is folded in the background, one run at a time, off the UI
  loop (the store folds big logs in a thread);
* a filesystem store (it has a ``root``) is woken by ``watchfiles`` on ``ROOT/changes.log``; the
  journal is *also* polled on a timer, because inotify may be missing (containers, network file
  systems) and watchfiles' own polling loses same-second appends;
* lease states and cancel requests of unfinished runs are re-probed every ``side_interval``
  (a worker can die without writing anything), and the run list is re-scanned every
  ``rescan_interval`` (a run that vanished is reported, one missed by the journal is picked up);
* runs that have no events yet (``engine.workers.pending_runs``: starting, queued, or whose worker died before
  ``RunStarted``) are listed too, from their start record (manifest, when it was asked for);
* bursts are coalesced: at most one refresh per ``min_interval`` (≤ 10 repaints a second).

Nothing here raises on a bad run: its ``load_error`` is set (code, message) and the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# engine.workers resolves its names when first read: pending_runs (its actions import the whole runtime, 0.25 s of
# `mfm tui`'s start; issue 15) is first called after the first screenful of runs is read.
import engine.workers as workers
from engine.config import RunManifest
from engine.errors import MfmError
from engine.ids import ArtifactId, RunId
from engine.run_summary import RunSummary
from engine.stores import RunSummaries
from engine.stores.fs import framing
from engine.workers.crash_loop import max_orphan_recoveries
from mfm_tui.log_tail import FileWatch
from mfm_tui.run_model import LeaseProbe, LeaseStatus, PlanShape, RunModel

if TYPE_CHECKING:
    from engine.plan import ExecutionPlan
    from engine.workers import PendingRun

__all__ = ["PlanResolver", "StoreWatcher", "WatchUpdate", "describe_error"]

PlanResolver = Callable[[RunManifest], "ExecutionPlan | PlanShape | Awaitable[ExecutionPlan | PlanShape | None] | None"]
"""``manifest -> plan`` (the operation registry's resolver); ``None`` or an exception: no plan shape."""

CODE_STORE_UNREADABLE = "store_unreadable"
CODE_RUN_VANISHED = "run_vanished"
JOURNAL_STEP_MS = 50
"""How often watchfiles' thread checks the journal for changes (a run started from another shell shows within
~0.1 s; about 0.1 % of a core while nothing changes)."""
DEAD_PROBE_EVERY = 30
"""Runs no worker holds are re-probed this many times less often than runs a worker holds (see ``poll``)."""
RESCAN_RUNS_PER_SECOND = 400
FIRST_SCREENFUL = 60
"""How many runs the first load shows before every run is listed (a tall terminal's worth)."""
"""The periodic rescan of every run folder is spread so that it lists at most this many runs per second."""


def describe_error(exc: BaseException) -> tuple[str, str]:
    """``(code, message)`` for any exception: the contract's code, else a generic one."""
    if isinstance(exc, MfmError):
        return (exc.code, exc.message)
    if isinstance(exc, OSError):
        return ("store_io", f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc))
    return ("unexpected_error", f"{type(exc).__name__}: {exc}"[:500])


@dataclass(slots=True)
class WatchUpdate:
    grown: set[RunId] = field(default_factory=set)
    """Runs whose streams grew (new envelopes)."""
    updated: set[RunId] = field(default_factory=set)
    """Runs whose models changed for any reason (a superset of ``grown``)."""
    errors: list[tuple[RunId | None, str, str]] = field(default_factory=list)
    """New errors: ``(run_id or None for the whole store, code, message)``."""
    initial: bool = False

    def __bool__(self) -> bool:
        return bool(self.updated or self.errors)

    def merge(self, other: WatchUpdate) -> None:
        self.grown |= other.grown
        self.updated |= other.updated
        self.errors.extend(other.errors)


class StoreWatcher:
    """See the module docstring. ``models`` is read by the screens (same event loop, no locking)."""

    def __init__(
        self,
        store: Any,
        *,
        lease_probe: LeaseProbe | None = None,
        plan_resolver: PlanResolver | None = None,
        poll_interval: float = 1.0,
        min_interval: float = 0.1,
        side_interval: float = 2.0,
        side_rate: float = 200.0,
        rescan_interval: float = 10.0,
        slice_seconds: float = 0.05,
        first_slice_seconds: float = 0.01,
        slice_pause: float = 0.003,
        first_paint_pause: float = 0.05,
        use_watchfiles: bool = True,
        crash_loop_limit: int | None = None,
        list_fold_bytes: int = 1 << 20,
    ) -> None:
        self.store = store
        self.crash_loop_limit = max_orphan_recoveries() if crash_loop_limit is None else crash_loop_limit
        """K of ``engine.workers``: the models' "crash-looping" threshold (``$MFM_MAX_ORPHAN_RECOVERIES``)."""
        self.events = store.events
        self.artifacts = store.artifacts
        self.summaries: RunSummaries | None = store.events if isinstance(store.events, RunSummaries) else None
        """The store's summaries, if it keeps them (else each run is read and folded)."""
        self.list_fold_bytes = list_fold_bytes
        """A run whose summary needs more of its log folded than this is shown provisional and indexed."""
        self._index_queue: list[RunId] = []
        self._indexed: dict[RunId, RunSummary] = {}
        self._index_task: asyncio.Future[None] | None = None
        self.lease_probe = lease_probe
        self.plan_resolver = plan_resolver
        self.poll_interval = poll_interval
        self.min_interval = min_interval
        self.side_interval = side_interval
        self.side_rate = side_rate
        self.rescan_interval = rescan_interval
        self.slice_seconds = slice_seconds
        self.first_slice_seconds = first_slice_seconds
        self.slice_pause = slice_pause
        self.first_paint_pause = first_paint_pause
        self.use_watchfiles = use_watchfiles
        self.models: dict[RunId, RunModel] = {}
        self._recovered_by: dict[RunId, RunId] = {}
        self.store_error: tuple[str, str] | None = None
        self._cursor: int | None = None
        self._manifests: dict[ArtifactId, RunManifest | None] = {}
        self._pending_manifests: dict[RunId, ArtifactId] = {}
        """The manifest of each listed run that has no events yet (from its start record)."""
        self._plans: dict[ArtifactId, PlanShape | None] = {}
        self._next_side = 0.0
        self._side_cycle = 0
        self._last_rescan = 0.0
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ one-shot steps

    async def load(self) -> WatchUpdate:
        """Read every run (the first paint); then manifests and plans."""
        update = WatchUpdate(initial=True)
        async for part in self.load_batches():
            update.merge(part)
        return update

    async def load_batches(self) -> AsyncIterator[WatchUpdate]:
        """Like ``load`` but yields a ``WatchUpdate`` per batch, so the first screenful paints early."""
        summaries: dict[RunId, RunSummary] | None = None
        try:
            self._cursor = (await self.events.changes_since(None)).cursor
            if self.summaries is not None:  # every summary at once, off this loop (the store-wide index)
                early = await self.summaries.first_run_summaries(FIRST_SCREENFUL)
                if early:  # a first screenful while every run is listed and checked
                    part = WatchUpdate(initial=True)
                    for run_id, seen in early.items():
                        if not seen.anomalies:
                            self._seed(run_id, seen, part)
                    yield part
                listed, summaries = await self.summaries.run_summaries(max_fold_bytes=self.list_fold_bytes)
                run_ids = list(listed)
            else:
                run_ids = list(await self.events.list_runs())
            self.store_error = None
        except Exception as exc:  # an unreadable store is shown, and retried by poll()
            self.store_error = describe_error(exc)
            yield WatchUpdate(errors=[(None, *self.store_error)], initial=True)
            return
        # Time-sliced so the UI stays responsive while a big store loads in the same event loop:
        # yield an update (and the loop) every ``slice_seconds`` of work, the first one very early.
        part = WatchUpdate(initial=True)
        budget = self.first_slice_seconds
        t0 = time.perf_counter()
        first = True
        for run_id in run_ids:
            summary = summaries.get(run_id) if summaries is not None else None
            if summary is None or summary.anomalies:  # not summarized, or maybe damaged: read it as a poll does
                await self._refresh_events(run_id, part)
            else:
                self._seed(run_id, summary, part)
            if time.perf_counter() - t0 >= budget:
                yield part
                # A real (short) sleep: the UI needs several loop turns to handle a message and paint.
                await asyncio.sleep(self.first_paint_pause if first else self.slice_pause)
                part, budget, t0 = WatchUpdate(initial=True), self.slice_seconds, time.perf_counter()
                first = False
        if part:  # the runs with events first: they paint before the worker actions are imported
            yield part
            part = WatchUpdate(initial=True)
        known = set(run_ids)
        try:  # then the runs that never started (their start records)
            unstarted = await workers.pending_runs(self.store, exclude=frozenset(run_ids))
        except Exception as exc:  # an unreadable store is shown, and retried by poll()
            self.store_error = describe_error(exc)
            yield WatchUpdate(errors=[(None, *self.store_error)], initial=True)
            return
        for p in unstarted:
            if p.run_id not in known:
                self._adopt_pending(p, part)
        if part:
            yield part
        # Second pass: manifests and plans (retry limits, countdowns, totals), unfinished runs first.
        pending = sorted(self.models.values(), key=lambda m: m.engine_status is not None)
        part = WatchUpdate(initial=True)
        t0 = time.perf_counter()
        for model in pending:
            if await self._refresh_manifest(model):
                part.updated.add(model.run_id)
            await self._refresh_side([model.run_id], part)
            if time.perf_counter() - t0 >= self.slice_seconds:
                if part:
                    yield part
                await asyncio.sleep(self.slice_pause)
                part, t0 = WatchUpdate(initial=True), time.perf_counter()
        if part:
            yield part
        self._last_rescan = time.monotonic()
        self._next_side = self._last_rescan + self.side_interval

    async def poll(self, *, force_side: bool = False) -> WatchUpdate:
        """One refresh: the journal's changed runs, and (when due) leases, cancels and a rescan."""
        update = WatchUpdate()
        self._take_indexed(update)
        try:
            batch = await self.events.changes_since(self._cursor)
            if self.store_error is not None:
                self.store_error = None
                if self._cursor is None:
                    async for part in self.load_batches():
                        update.merge(part)
                    return update
            self._cursor = batch.cursor
            changed = set(batch.runs)
        except Exception as exc:
            code, message = describe_error(exc)
            if self.store_error != (code, message):
                self.store_error = (code, message)
                update.errors.append((None, code, message))
            return update
        for run_id in changed:
            await self._refresh_events(run_id, update)
        now = time.monotonic()
        # A rescan lists every run folder: with many runs, rescan less often (≤ RESCAN_RUNS_PER_SECOND runs/s).
        rescan_interval = max(self.rescan_interval, len(self.models) / RESCAN_RUNS_PER_SECOND)
        if force_side or now - self._last_rescan >= rescan_interval:
            self._last_rescan = now
            await self._rescan(update)
        # A run no worker holds (lease none or stale) changes only when a worker takes it up again, and a worker
        # writes events: the journal names the run, which is probed then. Such runs are otherwise re-probed
        # DEAD_PROBE_EVERY times less often, a slice per cycle (a cancel request or a lease from elsewhere); runs a
        # worker holds (which can die without a word) as before. Idle CPU watching thousands of old runs stays low.
        grown = [r for r in changed if r in self.models and self.models[r].engine_status is None]
        if grown and not force_side:
            await self._refresh_side(grown, update)
        if force_side or now >= self._next_side:  # the run list is walked only when a probe is due, in one pass
            unfinished: list[RunId] = []
            live: list[RunId] = []
            dead: list[RunId] = []
            unread: list[RunId] = []  # runs whose last read failed are retried (the journal will not name them again)
            for run_id, model in self.models.items():
                if model.load_error is not None and model.load_error[0] != CODE_RUN_VANISHED and run_id not in changed:
                    unread.append(run_id)
                if model.engine_status is None:
                    unfinished.append(run_id)
                    lease = model.lease
                    (live if lease.is_live or lease is LeaseStatus.UNKNOWN else dead).append(run_id)
            # Probing costs a few syscalls per run: with many live runs, probe less often (≤ side_rate/s).
            self._next_side = now + max(self.side_interval, len(live) / self.side_rate)
            for run_id in unread:
                await self._refresh_events(run_id, update)
            await self._refresh_side(unfinished if force_side else [*live, *self._dead_slice(dead)], update)
        return update

    def _dead_slice(self, dead: list[RunId]) -> list[RunId]:
        """Every DEAD_PROBE_EVERY-th of the unfinished runs no worker holds, a different share each cycle."""
        self._side_cycle += 1
        return dead[self._side_cycle % DEAD_PROBE_EVERY :: DEAD_PROBE_EVERY]

    async def refresh_runs(self, run_ids: Iterable[RunId]) -> WatchUpdate:
        """Re-read the given runs now (after a user action such as cancel)."""
        update = WatchUpdate()
        ids = list(run_ids)
        for run_id in ids:
            await self._refresh_events(run_id, update)
        await self._refresh_side(ids, update)
        return update

    # ------------------------------------------------------------------ the loop

    async def run(self, emit: Callable[[WatchUpdate], None]) -> None:
        """Load, then watch forever (cancel the task to stop). ``emit`` gets each non-empty update."""
        async for part in self.load_batches():
            emit(part)
        await self.watch(emit)

    async def watch(self, emit: Callable[[WatchUpdate], None]) -> None:
        """Poll on wake-ups (watchfiles) and on a timer, forever; at most one refresh per ``min_interval``."""
        watcher = asyncio.ensure_future(self._watch_journal()) if self.use_watchfiles else None
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
                self._wake.clear()
                update = await self.poll()
                if update:
                    emit(update)
                    await asyncio.sleep(self.min_interval)  # coalesce bursts
        finally:
            if watcher is not None:
                watcher.cancel()
            self.stop_indexing()

    async def wait_indexed(self) -> None:
        """Until every run queued for indexing is folded (its model is seeded by the next ``poll``)."""
        while self._index_task is not None and not self._index_task.done():
            await asyncio.wait([self._index_task])

    def stop_indexing(self) -> None:
        if self._index_task is not None:
            self._index_task.cancel()
            self._index_task = None
        self._index_queue.clear()

    def wake(self) -> None:
        """Refresh soon (the journal changed, or the user asked)."""
        self._wake.set()

    def journal_path(self) -> Path | None:
        root = getattr(self.store, "root", None)
        return Path(root) / framing.JOURNAL_FILE if root is not None else None

    async def _watch_journal(self) -> None:
        """Wake on each append to the journal (``FileWatch``; its thread checks every ``JOURNAL_STEP_MS`` while
        nothing changes), else only the timer."""
        path = self.journal_path()
        if path is None:
            return
        watch = FileWatch(path.parent, [path.name], step_ms=JOURNAL_STEP_MS, debounce_ms=4 * JOURNAL_STEP_MS)
        if not watch.start():
            return
        try:
            while await watch.wait():
                self.wake()
        finally:
            watch.close()

    # ------------------------------------------------------------------ per run

    def _model(self, run_id: RunId) -> RunModel:
        model = self.models.get(run_id)
        if model is None:
            model = RunModel(run_id, crash_loop_limit=self.crash_loop_limit)
            model.recovered_by = self._recovered_by.pop(run_id, None)
            self.models[run_id] = model
        return model

    async def _refresh_events(self, run_id: RunId, update: WatchUpdate) -> None:
        model = self._model(run_id)
        try:
            if self.summaries is not None:
                summary = await self.summaries.run_summary(run_id, max_fold_bytes=self.list_fold_bytes)
                envelopes: list[Any] = []
                if summary is not None and not summary.complete:
                    self._queue_index(run_id)
                elif summary is not None and summary.anomalies:  # maybe damage: the store's read says (from the head)
                    envelopes = await self.events.read_range(run_id, summary.head + 1)
            else:
                summary = None
                envelopes = await self.events.read_range(run_id, model.last_seq + 1)
        except Exception as exc:
            err = describe_error(exc)
            if model.load_error != err:
                model.load_error = err
                update.updated.add(run_id)
                update.errors.append((run_id, *err))
            return
        damage = getattr(envelopes, "damage", None)  # the run log is damaged: what precedes it, then the error
        cleared = model.load_error is not None and model.load_error[0] != CODE_RUN_VANISHED and damage is None
        if cleared:
            model.load_error = None
        if damage is not None and model.load_error != (err := describe_error(damage)):
            model.load_error = err
            update.updated.add(run_id)
            update.errors.append((run_id, *err))
        had_manifest_id = model.manifest_id
        if (summary is not None and model.seed(summary)) or model.apply(envelopes):
            update.grown.add(run_id)
            update.updated.add(run_id)
            self._link_recovery(model, update)
            if had_manifest_id is None and model.manifest_id is not None and not update.initial:
                await self._refresh_manifest(model)
                await self._refresh_side([run_id], update)
        elif cleared:
            update.updated.add(run_id)

    def _seed(self, run_id: RunId, summary: RunSummary, update: WatchUpdate) -> None:
        """A run's model from its summary (the first load: nothing else is known of it yet)."""
        model = self._model(run_id)
        if not summary.complete:
            self._queue_index(run_id)
        if model.seed(summary):
            update.grown.add(run_id)
            update.updated.add(run_id)
            self._link_recovery(model, update)

    def _queue_index(self, run_id: RunId) -> None:
        if run_id in self._index_queue:
            return
        self._index_queue.append(run_id)
        if self._index_task is None or self._index_task.done():
            self._index_task = asyncio.ensure_future(self._index_runs())

    async def _index_runs(self) -> None:
        """Fold the queued runs' whole logs, one at a time (the store does it off this loop); ``poll`` seeds them."""
        summaries = self.summaries
        while self._index_queue and summaries is not None:
            run_id = self._index_queue[0]
            try:
                summary = await summaries.run_summary(run_id)
            except Exception:  # the next refresh of this run reports the error in its row
                summary = None
            finally:
                self._index_queue.pop(0)
            if summary is not None:
                self._indexed[run_id] = summary
                self.wake()

    def _take_indexed(self, update: WatchUpdate) -> None:
        """Seed the models whose runs were indexed since the last poll (unless they moved on meanwhile)."""
        indexed, self._indexed = self._indexed, {}
        for run_id, summary in indexed.items():
            model = self.models.get(run_id)
            if model is not None and (model.indexing or summary.head >= model.last_seq) and model.seed(summary):
                update.grown.add(run_id)
                update.updated.add(run_id)

    def _link_recovery(self, model: RunModel, update: WatchUpdate) -> None:
        """A recovery run names the failed run it continues: mark that run as recovered by it."""
        source_id = model.recovered_from
        if source_id is None:
            return
        source = self.models.get(source_id)
        if source is None:
            self._recovered_by[source_id] = model.run_id  # applied when the failed run is loaded
        elif source.recovered_by != model.run_id:
            source.recovered_by = model.run_id
            update.updated.add(source_id)

    def _adopt_pending(self, pending: PendingRun, update: WatchUpdate) -> None:
        """A run with no events yet: listed from its start record (its lease decides starting / not started)."""
        model = self._model(pending.run_id)
        if model.last_seq == 0:
            model.set_start_requested(pending.requested_millis)
            if pending.manifest_id is not None:
                self._pending_manifests[pending.run_id] = pending.manifest_id
            update.updated.add(pending.run_id)

    async def _refresh_manifest(self, model: RunModel) -> bool:
        mid = model.manifest_id or self._pending_manifests.get(model.run_id)
        if mid is None or model.manifest is not None:
            return False
        if mid not in self._manifests:
            try:
                raw = await self.artifacts.get(mid)
                self._manifests[mid] = RunManifest.model_validate_json(raw)
            except Exception as exc:
                code, message = describe_error(exc)
                self._manifests[mid] = None
                model.anomalies.append(f"manifest {mid[:12]} unreadable: [{code}] {message}")
        manifest = self._manifests[mid]
        if manifest is None:
            return False
        plan = await self._plan_for(mid, manifest)
        if plan is not None:
            model.set_plan(plan)
        model.set_manifest(manifest)
        return True

    async def _plan_for(self, manifest_id: ArtifactId, manifest: RunManifest) -> PlanShape | None:
        if self.plan_resolver is None:
            return None
        if manifest_id not in self._plans:
            shape: PlanShape | None = None
            try:
                plan: Any = self.plan_resolver(manifest)
                if inspect.isawaitable(plan):
                    plan = await plan
                if isinstance(plan, PlanShape):
                    shape = plan
                elif plan is not None:  # an ExecutionPlan
                    shape = PlanShape.from_plan(plan)
            except Exception:  # unknown operation or version: the run is shown from its events alone
                shape = None
            self._plans[manifest_id] = shape
        return self._plans[manifest_id]

    async def _refresh_side(self, run_ids: Iterable[RunId], update: WatchUpdate) -> None:
        """Lease state and cancel request of each unfinished run."""
        cancel_request = getattr(self.events, "cancel_request", None)
        for run_id in run_ids:
            model = self.models.get(run_id)
            if model is None or model.engine_status is not None:
                continue
            changed = False
            if self.lease_probe is not None:
                try:
                    changed |= model.set_lease(self.lease_probe(run_id))
                except Exception:
                    changed |= model.set_lease(LeaseStatus.UNKNOWN)
            if cancel_request is not None:
                # A control read failing is not worth a dialog: the events still show progress.
                with contextlib.suppress(Exception):
                    changed |= model.set_cancel_requested(await cancel_request(run_id) is not None)
            if changed:
                update.updated.add(run_id)

    async def _rescan(self, update: WatchUpdate) -> None:
        try:
            present = set(await self.events.list_runs())
            pending = await workers.pending_runs(self.store, exclude=present)
        except Exception as exc:
            code, message = describe_error(exc)
            if self.store_error != (code, message):
                self.store_error = (code, message)
                update.errors.append((None, code, message))
            return
        for run_id in present - self.models.keys():
            await self._refresh_events(run_id, update)
        for p in pending:
            if p.run_id not in self.models:
                self._adopt_pending(p, update)
                model = self.models[p.run_id]
                await self._refresh_manifest(model)
                await self._refresh_side([p.run_id], update)
        present |= {p.run_id for p in pending}
        for run_id in [r for r, m in self.models.items() if r not in present and m.last_seq == 0]:
            # A run that never started and is gone (discarded; or it started meanwhile: the journal names it).
            del self.models[run_id]
            self._pending_manifests.pop(run_id, None)
            update.updated.add(run_id)
        for run_id, model in self.models.items():
            vanished = run_id not in present
            if vanished and (model.load_error is None or model.load_error[0] != CODE_RUN_VANISHED):
                model.load_error = (CODE_RUN_VANISHED, f"run {run_id} is no longer in the store")
                update.updated.add(run_id)
                update.errors.append((run_id, *model.load_error))
            elif not vanished and model.load_error is not None and model.load_error[0] == CODE_RUN_VANISHED:
                model.load_error = None
                update.updated.add(run_id)
