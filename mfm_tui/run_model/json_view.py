"""A run model as JSON (``mfm show --json``, ``mfm start/resume --wait --json``, ``mfm runs --json``'s crash loop)."""

from __future__ import annotations

from typing import Any

from mfm_tui.run_model.fold import RunModel

__all__ = ["crash_loop_json", "run_json"]


def run_json(model: RunModel, now_millis: int | None = None) -> dict[str, Any]:
    """A JSON-ready summary of the run: status, times, progress, children and every state with its attempts."""
    return {
        "run_id": str(model.run_id),
        "op_id": model.op_id,
        "status": "damaged" if model.damaged else model.status.value,
        "damage": {"code": model.load_error[0], "message": model.load_error[1]}
        if model.damaged and model.load_error is not None
        else None,
        "manifest_id": model.manifest_id,
        "checkpoint_id": model.checkpoint_id,
        "final_snapshot_id": model.final_snapshot_id,
        "started_millis": model.started_millis,
        "ended_millis": model.ended_millis,
        "duration_millis": model.duration_millis(now_millis) if now_millis is not None else None,
        "head_seq": model.last_seq,
        "done": model.done,
        "total": model.total,
        "error": None if model.error is None else {"code": model.error[0], "message": model.error[1]},
        "lease": model.lease.value,
        "cancel_requested": model.cancel_requested,
        "requested_millis": model.requested_millis,
        "crash_loop": crash_loop_json(model),
        "parent_run_id": None if model.parent_run_id is None else str(model.parent_run_id),
        "children": [
            {
                "run_id": str(c.run_id),
                "state_id": None if c.state_id is None else str(c.state_id),
                "joined_status": c.status,
            }
            for c in model.children.values()
        ],
        "anomalies": list(model.anomalies),
        "states": [
            {
                "state_id": str(sv.state_id),
                "status": model.state_status_text(sv),
                "attempt": sv.attempt_number,
                "max_attempts": sv.max_attempts,
                "not_before_millis": sv.not_before_millis,
                "error": None if sv.error is None else {"code": sv.error[0], "message": sv.error[1]},
                "facts": len(sv.facts),
                "attempts": [
                    {
                        "attempt": a.attempt,
                        "entered_seq": a.entered_seq,
                        "terminal_seq": a.terminal_seq,
                        "entered_millis": a.entered_millis,
                        "terminal_millis": a.terminal_millis,
                        "outcome": "open" if a.is_open else ("completed" if a.completed else "failed"),
                        "base_snapshot_id": a.base_snapshot_id,
                        "result_snapshot_id": a.result_snapshot_id,
                        "error_code": a.error_code,
                        "error_message": a.error_message,
                        "retryable": a.retryable,
                    }
                    for a in sv.attempts
                ],
            }
            for sv in model.states.values()
        ],
    }


def crash_loop_json(model: RunModel) -> dict[str, Any] | None:
    """The state whose attempts ended in ``limit`` consecutive orphan recoveries, or ``None``."""
    loop = model.crash_loop
    if loop is None:
        return None
    return {"state_id": str(loop.state_id), "orphan_recoveries": loop.recoveries, "limit": model.crash_loop_limit}
