"""A run's events folded into what the monitor shows: pure, no Textual, no IO.

``RunModel(run_id).apply(envelopes)`` folds envelopes incrementally (only those past ``last_seq``;
duplicates are ignored), so a watcher can read each run from its last seq. Optional inputs refine
the view: the run manifest (max attempts, backoff, skip tags), a ``PlanShape`` (every state and the
edges, known before they are entered), the lease status (worker lost) and whether a cancel has been
requested. A malformed stream never raises: the fold records an ``anomalies`` line and goes on.

Used by the TUI (runs list, run screen) and by the CLI (``mfm runs``, ``mfm show``) so both agree.

Modules: ``enums`` (run, state and lease statuses, the urgency rank), ``views`` (plan shape, attempts, states, retry
targets), ``fold`` (``RunModel``), ``json_view`` (a model as JSON) and ``tree`` (child runs: links, a parent's summary,
tree order).
``RunDisplayStatus`` is the run's status as the monitor shows it (running, retrying, worker lost, cancelling, …);
the engine's own ``engine.events.RunStatus`` is the status ``RunCompleted`` records.
"""

from __future__ import annotations

from mfm_tui.run_model.enums import (
    CODE_RUN_CANCELLED,
    URGENCY,
    LeaseProbe,
    LeaseStatus,
    RunDisplayStatus,
    StateStatus,
    lease_status_of,
)
from mfm_tui.run_model.fold import RunModel
from mfm_tui.run_model.json_view import crash_loop_json, run_json
from mfm_tui.run_model.tree import ChildSummary, child_summary, link_children, tree_order
from mfm_tui.run_model.views import AttemptView, ChildRef, FactRef, PlanShape, RetryTarget, StateView

__all__ = [
    "CODE_RUN_CANCELLED",
    "URGENCY",
    "AttemptView",
    "ChildRef",
    "ChildSummary",
    "FactRef",
    "LeaseProbe",
    "LeaseStatus",
    "PlanShape",
    "RetryTarget",
    "RunDisplayStatus",
    "RunModel",
    "StateStatus",
    "StateView",
    "child_summary",
    "crash_loop_json",
    "lease_status_of",
    "link_children",
    "run_json",
    "tree_order",
]
