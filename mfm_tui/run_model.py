"""A run's events folded into what the monitor shows: pure, no Textual, no IO.

``RunModel(run_id).apply(envelopes)`` folds envelopes incrementally (only those past ``last_seq``;
duplicates are ignored), so a watcher can read each run from its last seq. Optional inputs refine
the view: the run manifest (max attempts, backoff, skip tags), a ``PlanShape`` (every state and the
edges, known before they are entered), the lease status (worker lost) and whether a cancel has been
requested. A malformed stream never raises: the fold records an ``anomalies`` line and goes on.

Used by the TUI (runs list, run screen) and by the CLI (``mfm runs``, ``mfm show``) so both agree.
"""

from __future__ import annotations

from mfm_tui._run_model_enums import _FINAL_STATUS as _FINAL_STATUS
from mfm_tui._run_model_enums import CODE_RUN_CANCELLED as CODE_RUN_CANCELLED
from mfm_tui._run_model_enums import URGENCY as URGENCY
from mfm_tui._run_model_enums import LeaseProbe as LeaseProbe
from mfm_tui._run_model_enums import LeaseStatus as LeaseStatus
from mfm_tui._run_model_enums import RunStatus as RunStatus
from mfm_tui._run_model_enums import StateStatus as StateStatus
from mfm_tui._run_model_enums import lease_status_of as lease_status_of
from mfm_tui._run_model_fold import RunModel as RunModel
from mfm_tui._run_model_views import AttemptView as AttemptView
from mfm_tui._run_model_views import FactRef as FactRef
from mfm_tui._run_model_views import PlanShape as PlanShape
from mfm_tui._run_model_views import RetryTarget as RetryTarget
from mfm_tui._run_model_views import StateView as StateView

__all__ = [
    "CODE_RUN_CANCELLED",
    "URGENCY",
    "AttemptView",
    "FactRef",
    "LeaseProbe",
    "LeaseStatus",
    "PlanShape",
    "RetryTarget",
    "RunModel",
    "RunStatus",
    "StateStatus",
    "StateView",
    "lease_status_of",
]
