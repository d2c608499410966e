"""Cancel, resume and replay: the proposals (refusal or ``ActionProposed``) and, once confirmed, their execution
through ``engine.workers`` (``CancelRequested``, ``RunResumed``, ``ReplayStarted``); ``check_spawned`` after a start.
"""

from __future__ import annotations

import contextlib
import getpass
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# engine and engine.workers resolve names when first read (request_retry_now, the worker actions): importing them
# is the whole runtime, 0.25 s of `mfm tui`'s start before the runs list could paint (issue 15).
import engine
import engine.workers as workers
from engine.errors import ErrorCategory, ErrorInfo, MfmError
from engine.ids import RunId
from engine.secrets import redact_text
from engine.stores.fs import framing
from mfm_tui.controller.plans import (
    ActionKind,
    ActionPlan,
    ActionRequest,
    describe_cancel,
    describe_resume,
    describe_retry_now,
    run_label,
)
from mfm_tui.messages import ActionProposed, CancelRequested, ErrorReported, ReplayStarted, RunResumed
from mfm_tui.run_model import LeaseStatus, RunModel
from mfm_tui.services import AppServices

__all__ = [
    "SPAWN_CHECK_SECONDS",
    "cancel_runs",
    "check_spawned",
    "execute",
    "execute_cancel",
    "execute_replay",
    "execute_resume",
    "execute_retry_now",
    "operator_reason",
    "read_only_reason",
    "replay_run_of",
    "resume_runs",
    "retry_now",
    "worker_log_path",
]

SPAWN_CHECK_SECONDS = 5.0
"""After a start, when to check that the worker took the run (else: report it with the log path)."""


def operator_reason() -> str:
    """The reason a cancel from the TUI records: who asked, from where (the run screen shows it with the time)."""
    try:
        who = getpass.getuser()
    except Exception:  # no user name in this environment: say where only
        who = "an operator"
    return f"cancelled by {who}@{socket.gethostname()} in the TUI"


def read_only_reason(services: AppServices) -> str | None:
    """Why controls are off (``None`` when they are on)."""
    if services.read_only:
        return "read-only mode: watching only, nothing can be started, cancelled, resumed or replayed"
    return None


def worker_log_path(store: Any, run_id: RunId) -> str:
    run_dir = getattr(store, "run_dir", None)
    if callable(run_dir):
        return str(Path(run_dir(run_id)) / framing.WORKER_LOG_FILE)
    return "(no worker log: not a filesystem store)"


def _model_of(services: AppServices, run_id: RunId, fallback: RunModel | None = None) -> RunModel | None:
    model = services.watcher.models.get(run_id)
    if fallback is not None and (model is None or fallback.last_seq > model.last_seq):
        return fallback
    return model


def _lease(services: AppServices, run_id: RunId, model: RunModel) -> tuple[LeaseStatus, str | None]:
    store = services.store
    if callable(getattr(store, "run_dir", None)):
        try:
            info = workers.lease_state(store, run_id)
            holder = f"pid {info.pid} on {info.host}" if info.pid is not None else None
            return LeaseStatus(info.state.value), holder
        except Exception:
            pass
    return model.lease, None


def _refuse(services: AppServices, code: str, message: str, title: str) -> None:
    services.post_message(ErrorReported(code, message, title=title))


def _guard(services: AppServices) -> bool:
    reason = read_only_reason(services)
    if reason is not None:
        services.notify(reason, severity="warning", timeout=4)
        return False
    return True


def _spawn_error(services: AppServices, exc: BaseException, run_id: RunId, what: str) -> None:
    if isinstance(exc, MfmError):
        _refuse(services, exc.info.code, exc.info.message, f"Cannot {what}")
    else:
        log = worker_log_path(services.store, run_id)
        _refuse(
            services, "worker_spawn_failed", f"the worker could not be started: {exc}; log: {log}", f"Cannot {what}"
        )


async def _sync(services: AppServices) -> None:
    with contextlib.suppress(Exception):
        await services.sync_store()


class _Refused(MfmError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(ErrorInfo.new(code, message, category=ErrorCategory.UNKNOWN))


# ---------------------------------------------------------------------------------------------- proposals


def cancel_runs(services: AppServices, run_ids: Sequence[RunId], *, current: RunModel | None = None) -> None:
    """``c``: cancel one run (or the marked set) after confirmation."""
    if not _guard(services) or not run_ids:
        return
    models = [m for r in run_ids if (m := _model_of(services, r, current if current and current.run_id == r else None))]
    if len(run_ids) == 1:
        if not models:
            _refuse(services, "run_not_found", f"run {run_ids[0]} is not loaded", "Cannot cancel")
            return
        known = services.watcher.models
        running = sum(1 for c in models[0].children if c in known and not known[c].status.is_finished)
        plan = describe_cancel(models[0], running)
        if plan.refusal is not None:
            _refuse(services, *plan.refusal, "Cannot cancel")
            return
        request = ActionRequest(
            ActionKind.CANCEL,
            (plan.run_id,),
            f"Cancel run {models[0].short_id}",
            plan.lines,
            confirm_label="cancel the run",
        )
    else:
        plans = [describe_cancel(m) for m in models]
        ok = [p for p in plans if p.ok]
        if not ok:
            _refuse(services, "nothing_to_cancel", f"none of the {len(run_ids)} marked runs can be cancelled", "Cancel")
            return
        lines = [f"Cancel {len(ok)} run(s)?", ""]
        lines += [f"  {run_label(services.watcher.models[p.run_id])}" for p in ok[:8]]
        if len(ok) > 8:
            lines.append(f"  and {len(ok) - 8} more")
        lines.append("Each in-flight attempt is interrupted; each run ends Cancelled.")
        skipped = len(plans) - len(ok)
        if skipped:
            lines.append(f"{skipped} marked run(s) are skipped (finished or already cancelling).")
        request = ActionRequest(
            ActionKind.CANCEL,
            tuple(p.run_id for p in ok),
            f"Cancel {len(ok)} runs",
            tuple(lines),
            confirm_label="cancel them",
            type_count=len(ok),
            danger=True,
        )
    services.post_message(ActionProposed(request))


def resume_runs(services: AppServices, run_ids: Sequence[RunId], *, current: RunModel | None = None) -> None:
    """``r``: resume one run (or the marked set) after confirmation; a failed run gets a recovery run."""
    if not _guard(services) or not run_ids:
        return
    plans: list[ActionPlan] = []
    for run_id in run_ids:
        model = _model_of(services, run_id, current if current and current.run_id == run_id else None)
        if model is None:
            plans.append(ActionPlan(run_id, ("run_not_found", f"run {run_id} is not loaded")))
            continue
        lease, holder = _lease(services, run_id, model)
        plans.append(describe_resume(model, lease, holder))
    if len(plans) == 1:
        plan = plans[0]
        if plan.refusal is not None:
            _refuse(services, *plan.refusal, "Cannot resume")
            return
        title = f"Resume run {plan.run_id[:8]}" + (" (recovery)" if plan.recovery else "")
        request = ActionRequest(
            ActionKind.RESUME, (plan.run_id,), title, plan.lines, confirm_label="resume", open_run=True
        )
    else:
        ok = [p for p in plans if p.ok]
        if not ok:
            _refuse(services, "nothing_to_resume", f"none of the {len(plans)} marked runs can be resumed", "Resume")
            return
        lines = [f"Resume {len(ok)} run(s)?", ""]
        for p in ok[:8]:
            model = services.watcher.models.get(p.run_id)
            kind = "recovery run" if p.recovery else "resume"
            lines.append(f"  {run_label(model) if model else p.run_id[:8]}  ({kind})")
        if len(ok) > 8:
            lines.append(f"  and {len(ok) - 8} more")
        skipped = len(plans) - len(ok)
        if skipped:
            lines.append(f"{skipped} marked run(s) are skipped (finished, or a worker is alive).")
        request = ActionRequest(
            ActionKind.RESUME,
            tuple(p.run_id for p in ok),
            f"Resume {len(ok)} runs",
            tuple(lines),
            confirm_label="resume them",
            type_count=len(ok),
            open_run=len(ok) == 1,
        )
    services.post_message(ActionProposed(request))


def replay_run_of(services: AppServices, run_id: RunId | None, *, current: RunModel | None = None) -> None:
    """``p``: replay a finished run (§0.11) as a new run; progress and verdict in a dialog."""
    if not _guard(services) or run_id is None:
        return
    model = _model_of(services, run_id, current if current and current.run_id == run_id else None)
    if model is None:
        _refuse(services, "run_not_found", f"run {run_id} is not loaded", "Cannot replay")
        return
    if not model.status.is_finished:
        _refuse(
            services,
            "run_not_finished",
            f"run {model.short_id} is {model.status.label}: replay a run once it has finished",
            "Cannot replay",
        )
        return
    lines = (
        f"Replay {run_label(model)} ({model.status.label})?",
        "",
        "A new run with the same manifest in Replay mode reads every recorded fact of this run (no live IO),",
        "then its final snapshot is compared with this run's: deterministic, or diverged at the first state",
        "whose result differs.",
    )
    request = ActionRequest(
        ActionKind.REPLAY, (model.run_id,), f"Replay run {model.short_id}", lines, confirm_label="replay"
    )
    services.post_message(ActionProposed(request))


def retry_now(services: AppServices, run_id: RunId, state_id: str | None, *, current: RunModel | None = None) -> None:
    """``R``: start the next attempt of a state waiting out its backoff now (confirmation names state and attempt)."""
    if not _guard(services):
        return
    model = _model_of(services, run_id, current if current and current.run_id == run_id else None)
    if model is None:
        _refuse(services, "run_not_found", f"run {run_id} is not loaded", "Cannot retry now")
        return
    plan = describe_retry_now(model, state_id, services.clock.now_millis())
    if plan.refusal is not None:
        _refuse(services, *plan.refusal, "Cannot retry now")
        return
    request = ActionRequest(
        ActionKind.RETRY_NOW,
        (model.run_id,),
        f"Retry now: run {model.short_id}",
        plan.lines,
        confirm_label="retry now",
        state_id=plan.state_id,
        attempt=plan.attempt,
    )
    services.post_message(ActionProposed(request))


# ---------------------------------------------------------------------------------------------- execution


async def execute(services: AppServices, request: ActionRequest) -> None:
    """Carry out a confirmed ``ActionRequest`` (the app runs it in a worker)."""
    run_ids = list(request.run_ids)
    if request.kind is ActionKind.CANCEL:
        await execute_cancel(services, run_ids)
    elif request.kind is ActionKind.RESUME:
        await execute_resume(services, run_ids, open_run=request.open_run)
    elif request.kind is ActionKind.RETRY_NOW:
        await execute_retry_now(services, run_ids[0], str(request.state_id), int(request.attempt or 0))
    else:
        await execute_replay(services, run_ids[0])


async def execute_cancel(services: AppServices, run_ids: list[RunId]) -> None:
    errors: list[tuple[RunId, BaseException]] = []
    for run_id in run_ids:
        try:
            await workers.cancel_run(services.store, run_id, operator_reason(), ops_modules=services.ops_modules)
        except Exception as exc:
            errors.append((run_id, exc))
    await _sync(services)
    if errors:
        first, error = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        _spawn_error(services, error, first, f"cancel run {first[:8]}{more}")
    ok = len(run_ids) - len(errors)
    if ok:
        services.notify(f"cancel requested for {ok} run(s): cancelling", timeout=3)
        # the run screen shows "cancelling" until RunCompleted lands
        services.post_message(CancelRequested(frozenset(run_ids)))


async def execute_resume(services: AppServices, run_ids: list[RunId], *, open_run: bool) -> None:
    errors: list[tuple[RunId, BaseException]] = []
    opened: RunId | None = None
    for run_id in run_ids:
        try:
            outcome = await workers.resume_run(services.store, run_id, ops_modules=services.ops_modules)
        except Exception as exc:
            errors.append((run_id, exc))
            continue
        new_id = outcome.recovery_run_id or outcome.run_id
        if outcome.finished and outcome.spawned_pid is None and new_id == run_id:
            errors.append(
                (run_id, _Refused("run_already_finished", f"run {run_id[:8]} already finished; nothing to resume"))
            )
            continue
        opened = RunId(str(new_id))
    await _sync(services)
    if errors:
        first, error = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        _spawn_error(services, error, first, f"resume run {first[:8]}{more}")
    ok = len(run_ids) - len(errors)
    if ok:
        services.notify(f"resuming {ok} run(s)", timeout=3)
    if open_run and opened is not None:
        services.post_message(RunResumed(opened))


async def execute_retry_now(services: AppServices, run_id: RunId, state_id: str, attempt: int) -> None:
    stores = getattr(services.store, "stores", services.store)
    try:
        await engine.request_retry_now(stores, run_id, state_id, attempt)
    except Exception as exc:
        _spawn_error(services, exc, run_id, "retry now")
        return
    services.notify(f"retry now requested: {state_id.rsplit('.', 1)[-1]} attempt {attempt + 1}", timeout=3)
    await _sync(services)


async def execute_replay(services: AppServices, run_id: RunId) -> None:
    try:
        replay_id = await workers.replay_run(services.store, run_id, ops_modules=services.ops_modules)
    except Exception as exc:
        _spawn_error(services, exc, run_id, "replay")
        return
    await _sync(services)
    services.post_message(ReplayStarted(run_id, replay_id))


async def check_spawned(services: AppServices, run_id: RunId) -> bool:
    """Whether the worker of a just-started run took it; if not, report it with its log path and last line."""
    store = services.store
    try:
        if (
            await store.events.head_seq(run_id) > 0
            or workers.lease_state(store, run_id).state is workers.LeaseState.HELD
        ):
            return True
    except Exception:
        return True  # not a filesystem store, or unreadable: nothing to say here
    log = worker_log_path(store, run_id)
    last = ""
    try:
        with open(log, "rb") as f:
            tail = redact_text(f.read()[-4096:].decode("utf-8", "replace"))  # the secrets guard, again (§12)
            lines = [ln for ln in tail.splitlines() if ln.strip()]
            last = lines[-1] if lines else ""
    except OSError:
        pass
    message = f"the worker of run {run_id[:8]} exited before starting it"
    message += f": {last}" if last else ""
    services.post_message(ErrorReported("worker_failed", f"{message}; log: {log}", title="Worker failed"))
    return False
