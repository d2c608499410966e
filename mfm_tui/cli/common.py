"""Shared pieces of the ``mfm`` command line, used by its command modules.

Per-invocation state (store and registry resolution), run-id prefix resolution and run view models,
JSON/table output and the CLI's own input error.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

# engine.workers resolves the actions (which import the whole runtime) when first called (issue 15: `mfm tui`).
import engine.workers as workers
from engine.errors import ErrorCategory, ErrorInfo, MfmError
from engine.events import DOMAIN_EVENT_RECOVERED_FROM, DomainEvent
from engine.ids import ArtifactId, RunId
from engine.open_store import open_store
from engine.operations import OperationRegistry, load_registry, read_manifest
from engine.run_summary import RunSummary
from engine.stores import ArtifactLister
from engine.workers import is_pooled, max_orphan_recoveries
from mfm_tui.config import resolve_store
from mfm_tui.run_model import PlanShape, RunDisplayStatus, RunModel, lease_status_of
from mfm_tui.settings import Settings
from mfm_tui.time_format import format_duration

__all__ = [
    "CliError",
    "Env",
    "duration_text",
    "echo_json",
    "env_of",
    "format_timestamp",
    "link_recoveries",
    "load_model",
    "now_millis",
    "print_table",
    "replay_source",
    "resolve_artifact_id",
    "resolve_run_id",
    "run_sync",
    "state_line",
    "status_text",
]

T = TypeVar("T")


class CliError(MfmError):
    @classmethod
    def new(cls, code: str, message: str) -> CliError:
        return cls(ErrorInfo.new(code, message, category=ErrorCategory.PARSING_INPUT))


@dataclass
class Env:
    """Per-invocation state shared by the commands (``ctx.obj``)."""

    store_option: str | None
    ops: tuple[str, ...]
    debug: bool
    _store: Any = None
    _registry: OperationRegistry | None = None
    plan_shapes: dict[str, PlanShape] = field(default_factory=dict)
    manifests: dict[str, Any] = field(default_factory=dict)
    """Manifests read, by id: content-addressed, so never stale; runs of one operation share theirs (`mfm runs` over
    10,000 runs read the same manifest 10,000 times: 3.2 s)."""
    settings: Settings = field(default_factory=Settings)
    settings_problem: tuple[str, str] | None = None
    """``(code, message)`` when the settings file is wrong (its defaults are used; the TUI shows it in a dialog)."""

    @property
    def store_location(self) -> Path | str:
        """The store folder, or a ``postgresql://`` URL: ``--store``, ``$MFM_STORE``, the settings file's ``store``,
        else the default folder."""
        option = self.store_option
        if not option and not os.environ.get("MFM_STORE") and self.settings.store:
            option = os.path.expanduser(self.settings.store)
        return resolve_store(option)

    @property
    def store_path(self) -> Path:
        location = self.store_location
        if not isinstance(location, Path):
            raise CliError.new("store_not_filesystem", "this command needs a filesystem store, not a database URL")
        return location

    @property
    def store(self) -> Any:
        """The store, opened to read (unless a command opened it already with :meth:`open_store`): it must exist
        (``store_not_found``), and opening it writes nothing, so a read-only store can be read."""
        return self.open_store()

    def open_store(self, *, create: bool = False, write: bool = False) -> Any:
        """The store, opened once per invocation. ``create``: a missing store is created (commands that write:
        ``start``, ``tui``); ``write``: one this user may not write is refused (``store_not_writable``)."""
        if self._store is None:
            self._store = open_store(self.store_location, create=create, write=write)
        return self._store

    @property
    def registry(self) -> OperationRegistry:
        if self._registry is None:
            self._registry = load_registry(self.ops)
        return self._registry


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def format_timestamp(millis: int | None) -> str:
    if millis is None:
        return "-"
    return datetime.fromtimestamp(millis / 1000).strftime("%Y-%m-%d %H:%M:%S")


def duration_text(millis: int | None) -> str:
    """A duration as the command line prints it: tenths below a minute (``42.5s``), ``-`` when unknown."""
    return format_duration(millis, unknown="-", tenths_below=60_000, round_tenths=True)


def now_millis() -> int:
    return int(time.time() * 1000)


def env_of(ctx: click.Context) -> Env:
    obj = ctx.find_root().obj
    assert isinstance(obj, Env)
    return obj


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


# ---------------------------------------------------------------------------------------------
# Runs: prefix resolution and view models
# ---------------------------------------------------------------------------------------------


async def resolve_run_id(store: Any, text: str) -> RunId:
    """A full run id or a unique prefix of one (as git does)."""
    prefix = text.strip().lower()
    if not prefix:
        raise CliError.new("usage", "a run id (or a prefix of one) is required")
    try:
        full = RunId(prefix)
    except ValueError:
        full = None
    if full is not None and (await store.events.head_seq(full) > 0 or _run_dir_exists(store, full)):
        return full  # (a run whose worker has not written RunStarted yet has a folder already)
    if full is not None and is_pooled(store) and await store.queue.get(full) is not None:
        return full  # (queued on a database store, not started by a worker yet)
    runs = sorted(str(r) for r in await workers.list_run_ids(store))  # (with the runs that never started)
    matches = [r for r in runs if r.startswith(prefix)]
    if not matches:
        raise MfmError(ErrorInfo.new("run_not_found", f"no run matches {text!r}"))
    if len(matches) > 1:
        shown = ", ".join(m[:12] for m in matches[:8]) + (" …" if len(matches) > 8 else "")
        raise CliError.new("run_id_ambiguous", f"{text!r} matches {len(matches)} runs: {shown}")
    return RunId(matches[0])


_ARTIFACT_MATCHES_SHOWN = 8


async def resolve_artifact_id(store: Any, text: str) -> ArtifactId:
    """A full artifact id or a unique prefix of one (as run ids): ambiguous → exit 2, unknown → exit 3."""
    prefix = text.strip().lower()
    if not prefix or len(prefix) > 64 or any(c not in "0123456789abcdef" for c in prefix):
        raise CliError.new("invalid_artifact_id", f"{text!r} is not an artifact id (64 hex digits, or a prefix)")
    if len(prefix) == 64:
        return ArtifactId(prefix)
    lister = store.artifacts
    if not isinstance(lister, ArtifactLister):
        raise CliError.new("artifact_prefix_unsupported", "this store cannot look artifacts up by prefix: give all 64")
    matches = await lister.ids_with_prefix(prefix, _ARTIFACT_MATCHES_SHOWN + 1)
    if not matches:
        raise MfmError(ErrorInfo.new("artifact_not_found", f"no artifact matches {text!r}"))
    if len(matches) > 1:
        shown = ", ".join(m[:12] for m in matches[:_ARTIFACT_MATCHES_SHOWN])
        more = " …" if len(matches) > _ARTIFACT_MATCHES_SHOWN else ""
        raise CliError.new("artifact_id_ambiguous", f"{text!r} matches several artifacts: {shown}{more}")
    return matches[0]


async def replay_source(store: Any, run_id: RunId) -> str | None:
    """The run that ``run_id`` replays, once its verdict is written (``None`` for any other run)."""
    verdict = await workers.read_verdict(store, run_id)
    source = None if verdict is None else verdict.get("source_run_id")
    return source if isinstance(source, str) else None


async def link_recoveries(env: Env, model: RunModel) -> None:
    """Fill ``model.recovered_by`` as ``mfm runs`` does: the run whose ``recovered_from`` event names it (looked
    for only when the run failed; each candidate's first events are read, not its whole log)."""
    if model.recovered_by is not None or model.status is not RunDisplayStatus.FAILED:
        return
    for other in await workers.list_run_ids(env.store):
        if other == model.run_id:
            continue
        for envelope in await env.store.events.read_range(RunId(other), 1, _RECOVERED_FROM_WITHIN):
            ev = envelope.event
            payload = ev.payload if isinstance(ev, DomainEvent) and ev.name == DOMAIN_EVENT_RECOVERED_FROM else None
            if isinstance(payload, dict) and payload.get("source_run_id") == str(model.run_id):
                model.recovered_by = RunId(other)
                return


_RECOVERED_FROM_WITHIN = 4
"""A recovery run's ``recovered_from`` event comes right after its ``RunStarted``."""


def _run_dir_exists(store: Any, run_id: RunId) -> bool:
    run_dir = getattr(store, "run_dir", None)
    return run_dir is not None and Path(run_dir(run_id)).is_dir()


async def load_model(env: Env, run_id: RunId, *, with_plan: bool = True, summary: RunSummary | None = None) -> RunModel:
    """The run's events folded by ``run_model`` with its manifest, plan shape (states not entered
    yet count in the totals), lease and cancel request. ``summary``: the store's summary of the run (a list of
    runs: ``RunSummaries.run_summaries``), used instead of reading every event unless it saw anomalies."""
    store = env.store
    model = RunModel(run_id, crash_loop_limit=max_orphan_recoveries())
    if summary is not None and summary.complete and not summary.anomalies:
        model.seed(summary)
    else:
        envelopes = await store.events.read_range(run_id, 1)
        model.apply(envelopes)
        damage = getattr(envelopes, "damage", None)  # the run log is damaged after these (filesystem store)
        if isinstance(damage, MfmError):
            model.load_error = (damage.code, damage.message)
    manifest_id = model.manifest_id
    if manifest_id is None:  # not started by a worker yet: its start record (or queue row) knows the manifest
        pending = await workers.pending_run(store, run_id)
        if pending is not None:
            manifest_id = pending.manifest_id
            model.set_start_requested(pending.requested_millis)
    if manifest_id is not None:
        try:
            manifest = env.manifests.get(manifest_id)
            if manifest is None:
                manifest = env.manifests[manifest_id] = await read_manifest(store.artifacts, manifest_id)
            model.set_manifest(manifest)
            if with_plan:
                shape = env.plan_shapes.get(manifest_id)
                if shape is None:
                    shape = env.plan_shapes[manifest_id] = PlanShape.from_plan(env.registry.plan_for(manifest))
                model.set_plan(shape)
        except MfmError as err:
            model.anomalies.append(f"manifest/plan unavailable: {err.one_line()}")
    model.set_lease(lease_status_of(workers.lease_state(store, run_id)))
    model.set_cancel_requested(await store.events.cancel_request(run_id) is not None)
    return model


def state_line(model: RunModel) -> str:
    if model.recovered_by is not None:
        return f"recovered as {model.recovered_by[:8]}"
    sv = model.current_state
    if sv is None or model.damaged:  # a damaged log: the state it was in after the damage cannot be read
        return "-"
    text = sv.short_name
    if sv.error is not None and sv.error[0]:
        text += f" [{sv.error[0]}]"
    return text


def status_text(model: RunModel, now: int) -> str:
    if model.damaged:
        return "damaged"  # its run log is damaged: `mfm events` / `mfm doctor` say where
    status = model.status
    retry = model.retry_target
    if status is RunDisplayStatus.RETRYING and retry is not None:
        remaining = retry.remaining_millis(now)
        tail = f" in {duration_text(remaining)}" if remaining is not None else ""
        return f"retrying {retry.next_attempt_number}/{retry.max_attempts or '?'}{tail}"
    return model.status_label
