"""Whether anyone will finish an unfinished run, for the commands that wait on one (``start --wait``,
``resume --wait``, ``events --follow``): without this, waiting on a run whose worker died waits forever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import engine.workers as workers
from engine.errors import ErrorInfo, MfmError
from engine.ids import RunId
from engine.secrets import redact_text
from engine.stores.fs import framing
from engine.workers import LeaseState, is_pooled

__all__ = ["lost_worker_error", "nobody_runs"]


async def nobody_runs(store: Any, run_id: RunId) -> bool:
    """No worker holds the run (or, on a database store, nobody will pick it up: the pool takes over a lost
    worker's run). Callers read the log once more before they conclude: the worker may have finished meanwhile."""
    lease = workers.lease_state(store, run_id)
    if is_pooled(store):
        return lease.state is LeaseState.NONE
    return lease.state is not LeaseState.HELD


async def lost_worker_error(store: Any, run_id: RunId) -> MfmError:
    """``worker_lost`` (exit 1) naming why and what to do; ``storage_full`` (exit 5) when the worker's last word was
    a full disk."""
    if is_pooled(store):
        row = await store.queue.get(run_id)
        why = "not queued" if row is None else f"{row.outcome or 'stopped'}: {row.last_error or 'no error'}"
        why = redact_text(why)  # the secrets guard, again (§12)
        return MfmError(
            ErrorInfo.new(
                "worker_lost",
                f"the worker pool stopped run {run_id} without finishing it ({why[:300]}); "
                f"`mfm resume {run_id[:8]}` queues it again",
            )
        )
    log = Path(store.run_dir(run_id)) / framing.WORKER_LOG_FILE
    last = _last_line(log)
    code = "storage_full" if last.startswith("error[storage_full]: ") else "worker_lost"  # exit 5, not 1
    return MfmError(
        ErrorInfo.new(
            code,
            f"the worker of run {run_id} exited without finishing it ({last}); "
            f"see {log}, then `mfm resume {run_id[:8]}`",
        )
    )


def _last_line(path: Path) -> str:
    """The log's last line, through the secrets guard (a log written by an older worker was not guarded)."""
    try:
        lines = [ln for ln in redact_text(path.read_text(errors="replace")).splitlines() if ln.strip()]
    except OSError:
        return "no worker log"
    return lines[-1][:300] if lines else "empty worker log"
