"""Test operations whose worker dies (tests only: ``mfm --ops tests/crash_ops.py …``), each until a gate file exists.

* ``crash_loop``: state ``prepare`` completes, then state ``boom`` SIGKILLs its own worker process (a detached
  ``python -m engine.workers`` worker, or a whole ``mfm worker serve`` pool process) — after printing a line that
  looks like a secret, which must never be shown back;
* ``die_before_start``: building the plan in a worker SIGKILLs it, so the worker dies before ``RunStarted``.

Both behave once ``gate`` (a path parameter) exists: ``boom`` completes, the plan builds.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from engine.config import Duration, Fixed, RetryPolicy, RunConfig
from engine.ids import OpId
from engine.meta import StateMeta
from engine.operations import Operation
from engine.plan import ExecutionPlan
from engine.state import StateOutcome
from engine.testing import make_plan

SECRET_LINE = "boom: dying now; password=hunter2-crash-ops"


class Params(BaseModel):
    gate: str


def _in_a_worker() -> bool:
    """A detached worker (``python -m engine.workers``) or a pool (``… worker serve``), not the CLI that validates."""
    main = sys.argv[0].replace(os.sep, "/")
    return main.endswith("engine/workers/__main__.py") or "serve" in sys.argv[1:]


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Prepare:
    def meta(self) -> StateMeta:
        return StateMeta()

    async def handle(self, ctx: Any, io: Any, rec: Any) -> StateOutcome:
        ctx.write("prepared", True)
        return StateOutcome()


class Boom:
    def __init__(self, gate: str) -> None:
        self.gate = gate

    def meta(self) -> StateMeta:
        return StateMeta()

    async def handle(self, ctx: Any, io: Any, rec: Any) -> StateOutcome:
        if not Path(self.gate).exists():
            print(SECRET_LINE, flush=True)
            _die()
        ctx.write("survived", True)
        return StateOutcome()


def _crash_loop_plan(p: Params, env: Any) -> ExecutionPlan:
    return make_plan([("prepare", Prepare()), ("boom", Boom(p.gate))], [("prepare", "boom")], op_id="crash_loop")


def _die_before_start_plan(p: Params, env: Any) -> ExecutionPlan:
    if _in_a_worker() and not Path(p.gate).exists():
        _die()
    return make_plan([("prepare", Prepare())], op_id="die_before_start")


_ONCE = RunConfig(retry_policy=RetryPolicy(max_attempts=1, backoff=Fixed(delay=Duration.from_millis(0))))

OPERATIONS = [
    Operation(
        op_id=OpId("crash_loop"),
        version="1",
        description="Kills its own worker in state boom until the gate file exists.",
        params_model=Params,
        build_plan=_crash_loop_plan,
        run_config=_ONCE,
    ),
    Operation(
        op_id=OpId("die_before_start"),
        version="1",
        description="Kills its worker before RunStarted until the gate file exists.",
        params_model=Params,
        build_plan=_die_before_start_plan,
        run_config=_ONCE,
    ),
]
