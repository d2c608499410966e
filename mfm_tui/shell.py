"""``!`` on the run screen: the operator's shell in the run's context (Textual's ``App.suspend``), to fix what made
a run fail without leaving the TUI.

:func:`shell_command` is pure: ``$SHELL`` (else ``/bin/sh``), started in the run's folder on a filesystem store (its
``worker.log``, ``exec.stderr`` and ``events.jsonl`` at hand; elsewhere the current folder), with ``MFM_RUN_ID`` and
``MFM_STORE`` set so ``mfm show $MFM_RUN_ID`` works as is. :func:`run_shell` runs it and waits.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.ids import RunId
from mfm_tui.run_model import RunDisplayStatus, RunModel

__all__ = ["ShellCommand", "offers_resume", "run_shell", "shell_command"]

_RESUMABLE = frozenset(
    {
        RunDisplayStatus.FAILED,
        RunDisplayStatus.WORKER_LOST,
        RunDisplayStatus.NOT_STARTED,
        RunDisplayStatus.CRASH_LOOPING,
    }
)


@dataclass(frozen=True, slots=True)
class ShellCommand:
    argv: tuple[str, ...]
    cwd: str
    env: dict[str, str]


def shell_command(store: Any, run_id: RunId, environ: Mapping[str, str]) -> ShellCommand:
    env = dict(environ)
    env["MFM_RUN_ID"] = str(run_id)
    cwd = os.getcwd()
    root = getattr(store, "root", None)
    run_dir = getattr(store, "run_dir", None)
    if root is not None and callable(run_dir):
        env["MFM_STORE"] = str(root)
        folder = str(run_dir(run_id))
        if os.path.isdir(folder):
            cwd = folder
    shell = env.get("SHELL") or "/bin/sh"
    return ShellCommand((shell,), cwd, env)


def offers_resume(model: RunModel) -> bool:
    """After the shell: whether to offer a resume (a failed run not recovered yet, or one nobody carries on)."""
    if model.status is RunDisplayStatus.FAILED:
        return model.recovered_by is None
    return model.status in _RESUMABLE


def run_shell(command: ShellCommand) -> int:
    """Run the shell in the foreground (the TUI is suspended meanwhile); its exit status."""
    return subprocess.run(list(command.argv), cwd=command.cwd, env=command.env, check=False).returncode
