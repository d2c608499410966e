"""What an action would do, in words: pure, tested without a terminal.

``describe_cancel`` / ``describe_resume`` turn a run's model into an ``ActionPlan`` (the lines of the confirmation,
or why it cannot happen); an ``ActionRequest`` is what the controller asks the operator to confirm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from engine.ids import RunId
from mfm_tui.run_model import LeaseStatus, RunDisplayStatus, RunModel, StateStatus
from mfm_tui.time_format import countdown_text

__all__ = [
    "ActionKind",
    "ActionPlan",
    "ActionRequest",
    "describe_cancel",
    "describe_resume",
    "describe_retry_now",
    "run_label",
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
    state_id: str | None = None
    """Retry now: the state whose backoff is cut short."""
    attempt: int | None = None
    """Retry now: the 0-based attempt that starts."""

    @property
    def ok(self) -> bool:
        return self.refusal is None


class ActionKind(StrEnum):
    CANCEL = "cancel"
    RESUME = "resume"
    REPLAY = "replay"
    RETRY_NOW = "retry_now"


@dataclass(frozen=True, slots=True)
class ActionRequest:
    """An action waiting for the operator's confirmation: what it does to which runs, and the dialog's text."""

    kind: ActionKind
    run_ids: tuple[RunId, ...]
    title: str
    lines: tuple[str, ...]
    """The dialog's body, one line each; the first is the question (bold)."""
    confirm_label: str
    type_count: int | None = None
    """Bulk: the number the operator must type to confirm."""
    danger: bool = False
    open_run: bool = False
    """Resume of one run: show the run (or its recovery run) afterwards."""
    state_id: str | None = None
    """Retry now: the state whose backoff is cut short."""
    attempt: int | None = None
    """Retry now: the 0-based attempt that starts now (``retry_scheduled``'s ``next_attempt``)."""


def run_label(model: RunModel) -> str:
    return f"{model.op_id or 'run'} {model.short_id}"


def describe_cancel(model: RunModel, running_children: int = 0) -> ActionPlan:
    """What a cancel does, or why it cannot; ``running_children``: its unfinished child runs (stopped with it)."""
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
    lines = [f"Cancel {run_label(model)} ({model.status.label}, {model.done}/{model.total} done)?", ""]
    if open_states:
        lines.append(f"The in-flight attempt of {', '.join(open_states)} is interrupted and closed as run_cancelled.")
    elif model.retry_target is not None:
        lines.append(f"The retry wait of {model.retry_target.state.short_name} is interrupted.")
    if model.status in (RunDisplayStatus.WORKER_LOST, RunDisplayStatus.NOT_STARTED, RunDisplayStatus.CRASH_LOOPING):
        lines.append("No worker holds the run: a worker is started to close it.")
    lines.append("The run then ends Cancelled at its last checkpoint; completed states keep their results.")
    if running_children:
        noun = "child run is" if running_children == 1 else "child runs are"
        lines.append(f"Its {running_children} running {noun} cancelled too.")
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
    if lease.is_live and status is not RunDisplayStatus.FAILED:
        who = f" ({holder})" if holder else ""
        return ActionPlan(
            model.run_id,
            ("worker_alive", f"run {model.short_id} has a live worker{who}; it is still running: nothing to resume"),
        )
    if status is RunDisplayStatus.FAILED and model.recovered_by is not None:  # a failed run is recovered once
        return ActionPlan(
            model.run_id,
            (
                "run_already_recovered",
                f"run {model.short_id} already recovered as {model.recovered_by[:8]}; resume that run instead",
            ),
        )
    if status is RunDisplayStatus.FAILED:
        failed = model.failed_state
        where = failed.short_name if failed is not None else "the failed state"
        err = failed.error if failed is not None else None
        lines = [f"Resume failed run {run_label(model)}?", ""]
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
    lines = [f"Resume {run_label(model)} ({model.status_label})?", ""]
    if status is RunDisplayStatus.NOT_STARTED:
        lines.append("Its worker died before RunStarted: the run is started again from its start record.")
        return ActionPlan(model.run_id, lines=tuple(lines))
    loop = model.crash_loop
    if status is RunDisplayStatus.CRASH_LOOPING and loop is not None:
        lines.append(
            f"Its worker died in {loop.state_id} {loop.recoveries} times in a row. Resuming runs it once more and "
            "resets the count: fix the cause first."
        )
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


def describe_retry_now(model: RunModel, state_id: str | None, now_millis: int) -> ActionPlan:
    """Cut the backoff of ``state_id`` (else of the run's next retry) short, or why not. ``lines[0]`` names the
    state and the attempt."""
    sv = model.states.get(state_id) if state_id is not None else None  # type: ignore[call-overload]
    if sv is None or sv.status is not StateStatus.RETRYING:
        target = model.retry_target
        sv = target.state if target is not None else None
    if model.status.is_finished:
        return ActionPlan(
            model.run_id, ("run_already_finished", f"run {model.short_id} already finished; nothing waits to retry")
        )
    if sv is None or sv.status is not StateStatus.RETRYING or sv.last is None:
        return ActionPlan(model.run_id, ("not_in_backoff", f"no state of run {model.short_id} waits for a retry"))
    attempt = sv.last.attempt + 1
    left = None if sv.not_before_millis is None else max(0, sv.not_before_millis - now_millis)
    due = "" if left is None else f" (due in {countdown_text(left)})"
    of = f"/{sv.max_attempts}" if sv.max_attempts is not None else ""
    lines = (
        f"Retry {sv.short_name} attempt {attempt + 1}{of} now?",
        "",
        f"State {sv.state_id} waits out its backoff{due}.",
        "Its worker starts the attempt within a fraction of a second instead.",
    )
    return ActionPlan(model.run_id, lines=lines, state_id=str(sv.state_id), attempt=attempt)
