"""Diffs: a state's result against its base, two runs, a diverged replay's state; the documents are read in a
worker of the app and shown through ``DiffLoaded`` (an unreadable one through ``ErrorReported``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.artifacts import read_canonical_json
from engine.ids import ArtifactId
from mfm_tui.messages import DiffLoaded, ErrorReported
from mfm_tui.run_model import RunModel
from mfm_tui.services import AppServices
from mfm_tui.store_watcher import describe_error

__all__ = ["diff_runs", "diff_state", "diff_state_between"]


def _short(state_id: str | None) -> str:
    return state_id.rsplit(".", 1)[-1] if state_id else "?"


async def _read_json(services: AppServices, aid: str | None) -> Any:
    if aid is None:
        return None
    return await read_canonical_json(services.store.artifacts, ArtifactId(aid))


def diff_state(services: AppServices, model: RunModel, state_id: str | None) -> None:
    """``d`` on a state: its result snapshot against its base snapshot."""
    sv = model.states.get(state_id) if state_id else None  # type: ignore[call-overload]
    if sv is None or sv.last is None:
        services.notify("select a state that has run (d diffs its result against its base)", timeout=3)
        return
    att = next((a for a in reversed(sv.attempts) if a.completed), None)
    if att is None or att.result_snapshot_id is None:
        services.notify(f"{sv.short_name} has no result yet: nothing to diff", timeout=3)
        return
    services.run_worker(
        _load_diff(
            services,
            f"{sv.short_name}: result vs base",
            [("context", att.base_snapshot_id, att.result_snapshot_id)],
            ("base", "result"),
        ),
        group="diff",
        exit_on_error=False,
    )


def diff_runs(services: AppServices, a: RunModel, b: RunModel) -> None:
    """Two marked runs: their final snapshots (or checkpoints) and their manifests."""
    sections = [
        ("final snapshot", a.final_snapshot_id or a.checkpoint_id, b.final_snapshot_id or b.checkpoint_id),
        ("manifest", a.manifest_id, b.manifest_id),
    ]
    services.run_worker(
        _load_diff(services, f"run {a.short_id} vs {b.short_id}", sections, (a.short_id, b.short_id)),
        group="diff",
        exit_on_error=False,
    )


def diff_state_between(services: AppServices, source: RunModel, replay: RunModel, state_id: str) -> None:
    """A replay diverged at ``state_id``: that state's result in the source run vs in the replay run."""

    def result(model: RunModel) -> str | None:
        sv = model.states.get(state_id)  # type: ignore[call-overload]
        att = next((a for a in reversed(sv.attempts) if a.completed), None) if sv is not None else None
        return att.result_snapshot_id if att is not None else None

    services.run_worker(
        _load_diff(
            services,
            f"{_short(state_id)}: source vs replay",
            [(f"context after {_short(state_id)}", result(source), result(replay))],
            (source.short_id, replay.short_id),
        ),
        group="diff",
        exit_on_error=False,
    )


async def _load_diff(
    services: AppServices,
    title: str,
    sections: Sequence[tuple[str, str | None, str | None]],
    labels: tuple[str, str],
) -> None:
    loaded: list[tuple[str, Any, Any]] = []
    try:
        for name, old_id, new_id in sections:
            loaded.append((name, await _read_json(services, old_id), await _read_json(services, new_id)))
    except Exception as exc:
        code, message = describe_error(exc)
        services.post_message(ErrorReported(code, message, title="Cannot diff"))
        return
    services.post_message(DiffLoaded(title, tuple(loaded), labels))
