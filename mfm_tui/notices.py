"""Noticing new failures: which runs just failed or lost their worker (pure, no Textual).

The app feeds every store update to a :class:`FailureWatch`; a run that turns failed, worker-lost or crash-looping
after the first load is reported once per such status, so the app can show a notice (and ring the terminal bell)
while the operator looks at another screen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from engine.ids import RunId
from mfm_tui.run_model import RunDisplayStatus, RunModel

__all__ = ["URGENT", "FailureWatch", "notice_text"]

URGENT = frozenset({RunDisplayStatus.FAILED, RunDisplayStatus.WORKER_LOST, RunDisplayStatus.CRASH_LOOPING})


class FailureWatch:
    """``seed(models)`` after the first load, then ``changes(models, updated_ids)`` → the runs that became urgent."""

    def __init__(self) -> None:
        self._seen: dict[RunId, RunDisplayStatus] = {}
        self.seeded = False

    def seed(self, models: Mapping[RunId, RunModel]) -> None:
        self._seen = {run_id: m.status for run_id, m in models.items()}
        self.seeded = True

    def changes(self, models: Mapping[RunId, RunModel], updated: Iterable[RunId]) -> list[RunModel]:
        if not self.seeded:
            return []
        out = []
        for run_id in updated:
            model = models.get(run_id)
            if model is None:
                continue
            before = self._seen.get(run_id)
            self._seen[run_id] = model.status
            if model.status in URGENT and before != model.status:
                out.append(model)
        return out


def notice_text(model: RunModel) -> str:
    what = {
        RunDisplayStatus.FAILED: "failed",
        RunDisplayStatus.WORKER_LOST: "lost its worker",
        RunDisplayStatus.CRASH_LOOPING: "is crash-looping",
    }.get(model.status, model.status.label)
    line = f"run {model.short_id} {model.op_id or ''} {what}".replace("  ", " ")
    if model.status is RunDisplayStatus.FAILED and model.error is not None:
        line += f": [{model.error[0]}] {model.error[1]}"
    return line[:200]
