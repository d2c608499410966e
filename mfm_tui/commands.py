"""The controller: cancel, resume, replay and diff from the keyboard, through the SAME actions the CLI uses.

Screens call these functions from their key actions (``c``, ``r``, ``p``, ``d``; bulk on the runs list); the app's
command palette lists those bindings with their keys. Each action:

1. is refused at once in read-only mode (``--read-only``, or a store that is not writable), with a message;
2. describes what will happen (``describe_cancel`` / ``describe_resume``: pure, tested without a terminal) and
   refuses clearly when it cannot happen (finished run, live worker);
3. asks for confirmation (bulk: type the number of runs);
4. calls ``engine.workers.cancel_run`` / ``resume_run`` / ``replay_run`` in a Textual worker; a run that changed
   meanwhile (finished, lease taken) is refused by those functions with the reason, which is shown in a dialog
   with its code. A worker that fails to spawn is reported with its log path. Never a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.command import Hit, Hits, Provider

from engine.errors import MfmError
from engine.ids import ArtifactId, RunId
from mfm_tui.messages import ErrorReported
from mfm_tui.run_model import LeaseStatus, RunDisplayStatus, RunModel, StateStatus
from mfm_tui.screens.confirm import ConfirmDialog

__all__ = [
    "ActionPlan",
    "StartCommands",
    "cancel_runs",
    "describe_cancel",
    "describe_resume",
    "diff_runs",
    "diff_state",
    "read_only_reason",
    "replay_run_of",
    "resume_runs",
    "worker_log_path",
]


@dataclass(frozen=True, slots=True)
class ActionPlan:
    """What an action would do to one run, or why it cannot (``refusal = (code, message)``)."""

    run_id: RunId
    refusal: tuple[str, str] | None = None
    lines: tuple[str, ...] = ()
    recovery: bool = False
    """Resume of a failed run: a new recovery run continues it."""
    orphans: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.refusal is None


def read_only_reason(app: Any) -> str | None:
    """Why controls are off (``None`` when they are on)."""
    if getattr(app, "read_only", False):
        return "read-only mode: watching only, nothing can be started, cancelled, resumed or replayed"
    return None


def worker_log_path(store: Any, run_id: RunId) -> str:
    run_dir = getattr(store, "run_dir", None)
    if callable(run_dir):
        return str(Path(run_dir(run_id)) / "worker.log")
    return "(no worker log: not a filesystem store)"


def _short(state_id: str | None) -> str:
    return state_id.rsplit(".", 1)[-1] if state_id else "?"


def _label(model: RunModel) -> str:
    return f"{model.op_id or 'run'} {model.short_id}"


# ---------------------------------------------------------------------------------------------- descriptions


def describe_cancel(model: RunModel) -> ActionPlan:
    if model.status.is_finished:
        return ActionPlan(
            model.run_id,
            (
                "run_already_finished",
                f"run {model.short_id} already finished ({model.status.label}); nothing to cancel",
            ),
        )
    if model.status is RunDisplayStatus.CANCELLING:
        return ActionPlan(model.run_id, ("cancel_already_requested", f"run {model.short_id} is already cancelling"))
    open_states = [sv.short_name for sv in model.open_states]
    lines = [f"Cancel {_label(model)} ({model.status.label}, {model.done}/{model.total} done)?", ""]
    if open_states:
        lines.append(f"The in-flight attempt of {', '.join(open_states)} is interrupted and closed as run_cancelled.")
    elif model.retry_target is not None:
        lines.append(f"The retry wait of {model.retry_target.state.short_name} is interrupted.")
    if model.status is RunDisplayStatus.WORKER_LOST:
        lines.append("No worker holds the run: a worker is started to close it.")
    lines.append("The run then ends Cancelled at its last checkpoint; completed states keep their results.")
    return ActionPlan(model.run_id, lines=tuple(lines))


def describe_resume(model: RunModel, lease: LeaseStatus, holder: str | None = None) -> ActionPlan:
    """Where a resume continues (§13), or why it cannot."""
    status = model.status
    if status is RunDisplayStatus.COMPLETED or status is RunDisplayStatus.CANCELLED:
        return ActionPlan(
            model.run_id,
            (
                "run_already_finished",
                f"run {model.short_id} already finished ({status.label}); a finished run is final",
            ),
        )
    if lease is LeaseStatus.HELD and status is not RunDisplayStatus.FAILED:
        who = f" ({holder})" if holder else ""
        return ActionPlan(
            model.run_id,
            ("worker_alive", f"run {model.short_id} has a live worker{who}; it is still running: nothing to resume"),
        )
    if status is RunDisplayStatus.FAILED:
        failed = model.failed_state
        where = failed.short_name if failed is not None else "the failed state"
        err = failed.error if failed is not None else None
        lines = [f"Resume failed run {_label(model)}?", ""]
        if err is not None:
            lines.append(f"It failed at {where}: [{err[0]}] {err[1]}")
        lines += [
            f"Creates a recovery run (same manifest, {model.done} completed state(s) carried over) that "
            f"continues at state {where}.",
            "This run keeps its history; the recovery run records where it came from (recovered_from).",
            "Fix the cause first (outside mfm), or the state fails again.",
        ]
        return ActionPlan(model.run_id, lines=tuple(lines), recovery=True)
    orphans = tuple(f"{sv.short_name} attempt {sv.last.attempt + 1}" for sv in model.open_states if sv.last)
    lines = [f"Resume {_label(model)} ({status.label})?", ""]
    if orphans:
        lines.append(f"Orphan attempt(s) closed as orphan_attempt_recovered: {', '.join(orphans)}.")
        lines.append(
            "It resumes at "
            + ", ".join(f"{sv.short_name} attempt {sv.last.attempt + 2}" for sv in model.open_states if sv.last)
            + "."
        )
    else:
        nxt = next((sv for sv in model.states.values() if not sv.status.is_done), None)
        if nxt is None:
            lines.append("Every state is done: the run is closed as Completed.")
        elif nxt.status is StateStatus.RETRYING and nxt.last is not None:
            lines.append(f"It resumes at {nxt.short_name} attempt {nxt.last.attempt + 2} (no backoff wait).")
        else:
            attempt = (nxt.last.attempt + 2) if nxt.last is not None else 1
            lines.append(f"It resumes at {nxt.short_name} attempt {attempt}.")
    lines.append(f"{model.done} of {model.total} state(s) are done and are not run again.")
    return ActionPlan(model.run_id, lines=tuple(lines), orphans=orphans)


# ---------------------------------------------------------------------------------------------- helpers


def _models(app: Any) -> dict[RunId, RunModel]:
    models = getattr(getattr(app, "watcher", None), "models", None)
    return models if isinstance(models, dict) else {}


def _model_of(app: Any, run_id: RunId, fallback: RunModel | None = None) -> RunModel | None:
    model = _models(app).get(run_id)
    if fallback is not None and (model is None or fallback.last_seq > model.last_seq):
        return fallback
    return model


def _lease(app: Any, run_id: RunId, model: RunModel) -> tuple[LeaseStatus, str | None]:
    store = app.store
    if callable(getattr(store, "run_dir", None)):
        try:
            from engine.workers import lease_state

            info = lease_state(store, run_id)
            holder = f"pid {info.pid} on {info.host}" if info.pid is not None else None
            return LeaseStatus(info.state.value), holder
        except Exception:
            pass
    return model.lease, None


def _refuse(app: Any, code: str, message: str, title: str) -> None:
    app.post_message(ErrorReported(code, message, title=title))


def _text(lines: Sequence[str]) -> Text:
    text = Text()
    for i, line in enumerate(lines):
        text.append(line, style="bold" if i == 0 else "")
        if i < len(lines) - 1:
            text.append("\n")
    return text


def _guard(app: Any) -> bool:
    reason = read_only_reason(app)
    if reason is not None:
        app.notify(reason, severity="warning", timeout=4)
        return False
    return True


def _spawn_error(app: Any, exc: BaseException, run_id: RunId, what: str) -> None:
    if isinstance(exc, MfmError):
        _refuse(app, exc.info.code, exc.info.message, f"Cannot {what}")
    else:
        log = worker_log_path(app.store, run_id)
        _refuse(app, "worker_spawn_failed", f"the worker could not be started: {exc}; log: {log}", f"Cannot {what}")


# ---------------------------------------------------------------------------------------------- cancel


def cancel_runs(app: Any, run_ids: Sequence[RunId], *, current: RunModel | None = None) -> None:
    """``c``: cancel one run (or the marked set) after confirmation."""
    if not _guard(app) or not run_ids:
        return
    models = [m for r in run_ids if (m := _model_of(app, r, current if current and current.run_id == r else None))]
    if len(run_ids) == 1:
        if not models:
            _refuse(app, "run_not_found", f"run {run_ids[0]} is not loaded", "Cannot cancel")
            return
        plan = describe_cancel(models[0])
        if plan.refusal is not None:
            _refuse(app, *plan.refusal, "Cannot cancel")
            return
        dialog = ConfirmDialog(f"Cancel run {models[0].short_id}", _text(plan.lines), confirm_label="cancel the run")
    else:
        plans = [describe_cancel(m) for m in models]
        ok = [p for p in plans if p.ok]
        if not ok:
            _refuse(app, "nothing_to_cancel", f"none of the {len(run_ids)} marked runs can be cancelled", "Cancel")
            return
        lines = [f"Cancel {len(ok)} run(s)?", ""]
        lines += [f"  {_label(_models(app)[p.run_id])}" for p in ok[:8]]
        if len(ok) > 8:
            lines.append(f"  and {len(ok) - 8} more")
        lines.append("Each in-flight attempt is interrupted; each run ends Cancelled.")
        skipped = len(plans) - len(ok)
        if skipped:
            lines.append(f"{skipped} marked run(s) are skipped (finished or already cancelling).")
        dialog = ConfirmDialog(
            f"Cancel {len(ok)} runs", _text(lines), confirm_label="cancel them", type_count=len(ok), danger=True
        )
        run_ids = [p.run_id for p in ok]
    targets = list(run_ids)

    def done(confirmed: bool | None) -> None:
        if confirmed:
            app.run_worker(_do_cancel(app, targets), group="controller", exit_on_error=False)

    app.push_screen(dialog, done)


async def _do_cancel(app: Any, run_ids: list[RunId]) -> None:
    from engine.workers import cancel_run

    errors: list[tuple[RunId, BaseException]] = []
    for run_id in run_ids:
        try:
            await cancel_run(app.store, run_id, ops_modules=getattr(app, "ops_modules", ()))
        except Exception as exc:
            errors.append((run_id, exc))
    await _sync(app)
    if errors:
        first, error = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        _spawn_error(app, error, first, f"cancel run {first[:8]}{more}")
    ok = len(run_ids) - len(errors)
    if ok:
        app.notify(f"cancel requested for {ok} run(s): cancelling", timeout=3)
        screen = app.screen
        refresh = getattr(screen, "_refresh_lease", None)
        if getattr(screen, "run_id", None) in run_ids and refresh is not None:
            with contextlib.suppress(Exception):
                await refresh(screen.model)  # the run screen shows "cancelling" until RunCompleted lands
                screen._render_all()


async def _sync(app: Any) -> None:
    sync = getattr(app, "sync_store", None)
    if sync is not None:
        with contextlib.suppress(Exception):
            await sync()


# ---------------------------------------------------------------------------------------------- resume


def resume_runs(app: Any, run_ids: Sequence[RunId], *, current: RunModel | None = None) -> None:
    """``r``: resume one run (or the marked set) after confirmation; a failed run gets a recovery run."""
    if not _guard(app) or not run_ids:
        return
    plans: list[ActionPlan] = []
    for run_id in run_ids:
        model = _model_of(app, run_id, current if current and current.run_id == run_id else None)
        if model is None:
            plans.append(ActionPlan(run_id, ("run_not_found", f"run {run_id} is not loaded")))
            continue
        lease, holder = _lease(app, run_id, model)
        plans.append(describe_resume(model, lease, holder))
    if len(plans) == 1:
        plan = plans[0]
        if plan.refusal is not None:
            _refuse(app, *plan.refusal, "Cannot resume")
            return
        title = f"Resume run {plan.run_id[:8]}" + (" (recovery)" if plan.recovery else "")
        dialog = ConfirmDialog(title, _text(plan.lines), confirm_label="resume")
        ok = plans
    else:
        ok = [p for p in plans if p.ok]
        if not ok:
            _refuse(app, "nothing_to_resume", f"none of the {len(plans)} marked runs can be resumed", "Resume")
            return
        lines = [f"Resume {len(ok)} run(s)?", ""]
        for p in ok[:8]:
            model = _models(app).get(p.run_id)
            kind = "recovery run" if p.recovery else "resume"
            lines.append(f"  {_label(model) if model else p.run_id[:8]}  ({kind})")
        if len(ok) > 8:
            lines.append(f"  and {len(ok) - 8} more")
        skipped = len(plans) - len(ok)
        if skipped:
            lines.append(f"{skipped} marked run(s) are skipped (finished, or a worker is alive).")
        dialog = ConfirmDialog(f"Resume {len(ok)} runs", _text(lines), confirm_label="resume them", type_count=len(ok))
    targets = [p.run_id for p in ok]

    def done(confirmed: bool | None) -> None:
        if confirmed:
            app.run_worker(
                _do_resume(app, targets, open_run=len(targets) == 1), group="controller", exit_on_error=False
            )

    app.push_screen(dialog, done)


async def _do_resume(app: Any, run_ids: list[RunId], *, open_run: bool) -> None:
    from engine.workers import resume_run

    errors: list[tuple[RunId, BaseException]] = []
    opened: RunId | None = None
    for run_id in run_ids:
        try:
            outcome = await resume_run(app.store, run_id, ops_modules=getattr(app, "ops_modules", ()))
        except Exception as exc:
            errors.append((run_id, exc))
            continue
        new_id = getattr(outcome, "recovery_run_id", None) or getattr(outcome, "run_id", run_id)
        if getattr(outcome, "finished", False) and getattr(outcome, "spawned_pid", None) is None and new_id == run_id:
            errors.append(
                (run_id, _Refused("run_already_finished", f"run {run_id[:8]} already finished; nothing to resume"))
            )
            continue
        opened = RunId(str(new_id))
    await _sync(app)
    if errors:
        first, error = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        _spawn_error(app, error, first, f"resume run {first[:8]}{more}")
    ok = len(run_ids) - len(errors)
    if ok:
        app.notify(f"resuming {ok} run(s)", timeout=3)
    if open_run and opened is not None:
        _open(app, opened)


class _Refused(MfmError):
    def __init__(self, code: str, message: str) -> None:
        from engine.errors import ErrorCategory, ErrorInfo

        super().__init__(ErrorInfo.new(code, message, category=ErrorCategory.UNKNOWN))


def _open(app: Any, run_id: RunId) -> None:
    """Show ``run_id``: stay if it is the screen on top, else open it."""
    screen = app.screen
    if getattr(screen, "run_id", None) == run_id:
        return
    if getattr(screen, "run_id", None) is not None:
        app.pop_screen()
    app.open_run(run_id)


# ---------------------------------------------------------------------------------------------- replay


def replay_run_of(app: Any, run_id: RunId | None, *, current: RunModel | None = None) -> None:
    """``p``: replay a finished run (§0.11) as a new run; progress and verdict in a dialog."""
    if not _guard(app) or run_id is None:
        return
    model = _model_of(app, run_id, current if current and current.run_id == run_id else None)
    if model is None:
        _refuse(app, "run_not_found", f"run {run_id} is not loaded", "Cannot replay")
        return
    if not model.status.is_finished:
        _refuse(
            app,
            "run_not_finished",
            f"run {model.short_id} is {model.status.label}: replay a run once it has finished",
            "Cannot replay",
        )
        return
    lines = [
        f"Replay {_label(model)} ({model.status.label})?",
        "",
        "A new run with the same manifest in Replay mode reads every recorded fact of this run (no live IO),",
        "then its final snapshot is compared with this run's: deterministic, or diverged at the first state",
        "whose result differs.",
    ]

    def done(confirmed: bool | None) -> None:
        if confirmed:
            app.run_worker(_do_replay(app, model), group="controller", exit_on_error=False)

    app.push_screen(ConfirmDialog(f"Replay run {model.short_id}", _text(lines), confirm_label="replay"), done)


async def _do_replay(app: Any, source: RunModel) -> None:
    from engine.workers import replay_run
    from mfm_tui.screens.diff import ReplayScreen

    try:
        replay_id = await replay_run(app.store, source.run_id, ops_modules=getattr(app, "ops_modules", ()))
    except Exception as exc:
        _spawn_error(app, exc, source.run_id, "replay")
        return
    await _sync(app)
    app.push_screen(ReplayScreen(source.run_id, replay_id))


# ---------------------------------------------------------------------------------------------- diff


async def _read_json(app: Any, aid: str | None) -> Any:
    from engine._artifacts import read_canonical_json

    if aid is None:
        return None
    return await read_canonical_json(app.store.artifacts, ArtifactId(aid))


def diff_state(app: Any, model: RunModel, state_id: str | None) -> None:
    """``d`` on a state: its result snapshot against its base snapshot."""
    sv = model.states.get(state_id) if state_id else None  # type: ignore[call-overload]
    if sv is None or sv.last is None:
        app.notify("select a state that has run (d diffs its result against its base)", timeout=3)
        return
    att = next((a for a in reversed(sv.attempts) if a.completed), None)
    if att is None or att.result_snapshot_id is None:
        app.notify(f"{sv.short_name} has no result yet: nothing to diff", timeout=3)
        return
    app.run_worker(
        _push_diff(
            app,
            f"{sv.short_name}: result vs base",
            [("context", att.base_snapshot_id, att.result_snapshot_id)],
            ("base", "result"),
        ),
        group="diff",
        exit_on_error=False,
    )


def diff_runs(app: Any, a: RunModel, b: RunModel) -> None:
    """Two marked runs: their final snapshots (or checkpoints) and their manifests."""
    sections = [
        ("final snapshot", a.final_snapshot_id or a.checkpoint_id, b.final_snapshot_id or b.checkpoint_id),
        ("manifest", a.manifest_id, b.manifest_id),
    ]
    app.run_worker(
        _push_diff(app, f"run {a.short_id} vs {b.short_id}", sections, (a.short_id, b.short_id)),
        group="diff",
        exit_on_error=False,
    )


async def _push_diff(
    app: Any, title: str, sections: Sequence[tuple[str, str | None, str | None]], labels: tuple[str, str]
) -> None:
    from mfm_tui.screens.diff import DiffScreen

    loaded: list[tuple[str, Any, Any]] = []
    try:
        for name, old_id, new_id in sections:
            loaded.append((name, await _read_json(app, old_id), await _read_json(app, new_id)))
    except Exception as exc:
        from mfm_tui.store_watcher import describe_error

        code, message = describe_error(exc)
        _refuse(app, code, message, "Cannot diff")
        return
    app.push_screen(DiffScreen(title, loaded, labels=labels))


def diff_state_between(app: Any, source: RunModel, replay: RunModel, state_id: str) -> None:
    """A replay diverged at ``state_id``: that state's result in the source run vs in the replay run."""

    def result(model: RunModel) -> str | None:
        sv = model.states.get(state_id)  # type: ignore[call-overload]
        att = next((a for a in reversed(sv.attempts) if a.completed), None) if sv is not None else None
        return att.result_snapshot_id if att is not None else None

    app.run_worker(
        _push_diff(
            app,
            f"{_short(state_id)}: source vs replay",
            [(f"context after {_short(state_id)}", result(source), result(replay))],
            (source.short_id, replay.short_id),
        ),
        group="diff",
        exit_on_error=False,
    )


# ---------------------------------------------------------------------------------------------- command palette


class StartCommands(Provider):
    """The palette's "Start demo_flaky (s)" entries: one per operation, opening the start form on it.

    Every other action is in the palette through its key binding (the app lists the current screen's bindings with
    their keys); starting gets one entry per operation because it is what an operator searches for by name.
    """

    async def search(self, query: str) -> Hits:
        app: Any = self.app
        registry = getattr(app, "registry", None)
        if registry is None or read_only_reason(app) is not None:
            return
        matcher = self.matcher(query)
        for op in registry.operations():
            text = f"Start {op.op_id} (s)"
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), partial(_open_start, app, str(op.op_id)), help=op.summary)


def _open_start(app: Any, op_id: str) -> None:
    from mfm_tui.screens.start import StartScreen

    app.push_screen(StartScreen(op_id=op_id))
