"""The controller: cancel, resume, replay and diff from the keyboard, through the SAME actions the CLI uses.

Screens call these functions from their key actions (``c``, ``r``, ``p``, ``d``; bulk on the runs list) with the
app's services (``AppServices``). The controller never pushes a screen: it posts messages (``mfm_tui.messages``)
and the app shows the dialogs and screens. Each action:

1. is refused at once in read-only mode (``--read-only``, or a store that is not writable), with a message;
2. describes what will happen (``describe_cancel`` / ``describe_resume``: pure, tested without a terminal) and
   refuses clearly when it cannot happen (finished run, live worker): ``ErrorReported``;
3. asks for confirmation: ``ActionProposed`` carries an ``ActionRequest`` (the dialog's text; bulk: type the number
   of runs); the app shows the confirmation and, once confirmed, runs ``execute(services, request)`` in a worker;
4. calls ``engine.workers.cancel_run`` / ``resume_run`` / ``replay_run``; a run that changed meanwhile (finished,
   lease taken) is refused by those functions with the reason, which is shown in a dialog with its code. A worker
   that fails to spawn is reported with its log path. Never a traceback. ``CancelRequested``, ``RunResumed`` and
   ``ReplayStarted`` then say what happened.

A diff reads its documents in a worker and posts ``DiffLoaded``; ``check_spawned`` reports a started run whose
worker never took it.

Modules: ``plans`` (what an action would do, pure), ``actions`` (cancel, resume, replay: proposals and execution),
``diff``.
"""

from __future__ import annotations

from mfm_tui.controller.actions import (
    SPAWN_CHECK_SECONDS,
    cancel_runs,
    check_spawned,
    execute,
    execute_cancel,
    execute_replay,
    execute_resume,
    execute_retry_now,
    read_only_reason,
    replay_run_of,
    resume_runs,
    retry_now,
    worker_log_path,
)
from mfm_tui.controller.diff import diff_runs, diff_state, diff_state_between
from mfm_tui.controller.plans import (
    ActionKind,
    ActionPlan,
    ActionRequest,
    describe_cancel,
    describe_resume,
    describe_retry_now,
)

__all__ = [
    "SPAWN_CHECK_SECONDS",
    "ActionKind",
    "ActionPlan",
    "ActionRequest",
    "cancel_runs",
    "check_spawned",
    "describe_cancel",
    "describe_resume",
    "describe_retry_now",
    "diff_runs",
    "diff_state",
    "diff_state_between",
    "execute",
    "execute_cancel",
    "execute_replay",
    "execute_resume",
    "execute_retry_now",
    "read_only_reason",
    "replay_run_of",
    "resume_runs",
    "retry_now",
    "worker_log_path",
]
