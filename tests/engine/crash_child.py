"""The child process of ``test_runtime_crash.py``: starts or resumes the crash plan on an ``FsStore``.

Run by the test through a ``multiprocessing`` forkserver (each child is a real, fresh process forked from a server
that only imported the engine, so it starts in milliseconds) and killed with SIGKILL. Also usable by hand::

    python tests/engine/crash_child.py start WORKDIR BIN_DIR [KILL_AFTER]
    python tests/engine/crash_child.py resume WORKDIR BIN_DIR [KILL_AFTER]

The plan (``FanOutJoin{2}``, six states)::

    flaky -> {fan_b, fan_c, fan_d} -> run_exec -> apply_effect

- ``flaky`` fails retryable once (1 ms backoff): its first attempt records the fact ``crash:flaky_failed_once``
  and raises; a later attempt finds the fact and succeeds, so the behaviour survives crashes and new processes;
- ``fan_b``, ``fan_c``, ``fan_d`` write distinct keys (at most two attempts open at once);
- ``run_exec`` runs ``BIN_DIR/echo_json.sh`` (a ``#!/bin/sh`` script admitted by ``RunConfig.exec_allowlist``)
  through the exec transport, with a fact key;
- ``apply_effect`` is ``ApplySideEffect`` with ``Idempotency::Key``: its unkeyed IO call gets the engine's
  side-effect fact key (``side_effect_fact_key``), so once the fact is durable no process reaches the transport
  again. The transport appends the idempotency key as a line to ``WORKDIR/effect.txt`` unless the file already
  holds it (the external idempotency mechanism of ENGINE-SPEC §13: a kill between the effect and the durable fact
  is the one window the fact alone cannot close), and logs every call it receives to ``WORKDIR/calls.txt``.

``KILL_AFTER = k`` wraps the event store: right after the k-th append returns, the process SIGKILLs itself.
The outcome (phase, final snapshot, the head after each append) goes to ``WORKDIR/result.json``; an exception's
traceback to ``WORKDIR/error.txt`` (exit status 3).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: make ``engine`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.config import Duration, FanOutJoin, Fixed, RetryPolicy, RunConfig
from engine.context import DynContext
from engine.engine import RunResult, Stores
from engine.errors import StateError
from engine.events import EventEnvelope
from engine.exec_transport import ExecTransportFactory
from engine.ids import FactKey, RunId
from engine.io import IoCall, IoProvider
from engine.meta import Idempotency, SideEffectKind, StateMeta
from engine.plan import ExecutionPlan
from engine.recorder import EventRecorder
from engine.runtime import Engine
from engine.stores._base import EventStore
from engine.stores.fs import FsStore
from engine.testing import FnState, base_config, fixed_run_ids, make_plan, start_plan
from engine.transport import LiveTransport, TransportContext

RUN_ID = RunId("c3c3c3c3-0000-4000-8000-000000000001")
IDEMPOTENCY_KEY = "crash:append_line"
FLAKY_FACT = "crash:flaky_failed_once"
EXEC_FACT = "crash:exec_echo"
PROGRAM = "echo_json.sh"
EXIT_ERROR = 3
PRELOAD = ["engine.runtime", "engine.stores.fs", "engine.exec_transport", "tests.engine.crash_child"]


def write_program(bin_dir: Path) -> Path:
    """``echo_json.sh``: answers ``{"echo": <stdin JSON>, "program": "echo_json"}``."""
    path = bin_dir / PROGRAM
    path.write_text('#!/bin/sh\nprintf \'{"echo":\'\ncat\nprintf \',"program":"echo_json"}\'\n')
    path.chmod(0o755)
    return path


def run_config(bin_dir: Path, max_attempts: int = 3) -> RunConfig:
    return base_config(
        execution_mode=FanOutJoin(max_concurrency=2),
        retry_policy=RetryPolicy(max_attempts=max_attempts, backoff=Fixed(delay=Duration.from_millis(1))),
        exec_allowlist=(str(bin_dir.resolve()) + "/", os.path.realpath("/bin/sh")),
    )


def build_plan(bin_dir: Path) -> ExecutionPlan:
    program = str((bin_dir / PROGRAM).resolve())

    async def flaky(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        if await io.get_recorded_fact(FLAKY_FACT) is None:
            await io.record_value(FLAKY_FACT, {"failed": True})
            raise StateError.new("flaky", "first attempt fails (retryable)", retryable=True)
        ctx.write("flaky", "ok")

    def fan(key: str, value: int) -> FnState:
        async def write(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
            await asyncio.sleep(0)  # let the other branch in flight interleave
            ctx.write(key, value)

        return FnState(write)

    async def run_exec(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        request = {"kind": "run_program_v1", "program_path": program, "stdin_json": {"b": ctx.read("fan_b")}}
        res = await io.call(IoCall(namespace="exec", request=request, fact_key=FactKey(EXEC_FACT)))
        ctx.write("exec", res.response)

    async def apply_effect(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        res = await io.call(IoCall(namespace="effect.append_line", request={"key": IDEMPOTENCY_KEY}))
        ctx.write("effect", res.response)

    effect_meta = StateMeta(side_effects=SideEffectKind.APPLY_SIDE_EFFECT, idempotency=Idempotency.key(IDEMPOTENCY_KEY))
    return make_plan(
        [
            ("flaky", FnState(flaky)),
            ("fan_b", fan("fan_b", 2)),
            ("fan_c", fan("fan_c", 3)),
            ("fan_d", fan("fan_d", 4)),
            ("run_exec", FnState(run_exec)),
            ("apply_effect", FnState(apply_effect, effect_meta)),
        ],
        [
            ("flaky", "fan_b"),
            ("flaky", "fan_c"),
            ("flaky", "fan_d"),
            ("fan_b", "run_exec"),
            ("fan_c", "run_exec"),
            ("fan_d", "run_exec"),
            ("run_exec", "apply_effect"),
        ],
        op_id="crash",
    )


class EffectTransport:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    async def call(self, namespace: str, request: Any) -> Any:
        key = str(request["key"])
        _append_durably(self.workdir / "calls.txt", f"{os.getpid()} {key}\n")
        effect = self.workdir / "effect.txt"
        seen = effect.read_text().splitlines() if effect.exists() else []
        if key not in seen:  # the external system's own idempotency check, keyed by the idempotency key
            _append_durably(effect, key + "\n")
        return {"applied": key}


class EffectFactory:
    """Namespace group ``effect``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    @property
    def namespace_group(self) -> str:
        return "effect"

    def make(self, context: TransportContext) -> LiveTransport:
        return EffectTransport(self.workdir)


def _append_durably(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


class KillAfter:
    """An ``EventStore`` that SIGKILLs its own process right after the ``kill_after``-th append returned."""

    def __init__(self, inner: EventStore, kill_after: int | None) -> None:
        self.inner = inner
        self.kill_after = kill_after
        self.heads: list[int] = []

    async def head_seq(self, run_id: RunId) -> int:
        return await self.inner.head_seq(run_id)

    async def append(self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope]) -> int:
        head = await self.inner.append(run_id, expected_seq, events)
        self.heads.append(head)
        if len(self.heads) == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return head

    async def read_range(self, run_id: RunId, from_seq: int, to_seq: int | None = None) -> list[EventEnvelope]:
        return await self.inner.read_range(run_id, from_seq, to_seq)


async def _run(
    mode: str, workdir: Path, bin_dir: Path, kill_after: int | None, max_attempts: int
) -> tuple[RunResult, list[int]]:
    plan = build_plan(bin_dir)
    fs = FsStore(workdir / "store")
    events = KillAfter(fs.events, kill_after)
    stores = Stores(events=events, artifacts=fs.artifacts, control=fs.events)
    engine = Engine(
        plan_resolver=lambda manifest: plan,
        transports=[ExecTransportFactory(), EffectFactory(workdir)],
        run_ids=fixed_run_ids(RUN_ID),
    )
    if mode == "start":
        result = await start_plan(engine, stores, plan, run_config(bin_dir, max_attempts), {"input": "crash"})
    elif mode == "resume":
        result = await engine.resume(stores, RUN_ID)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return result, events.heads


def child_main(
    mode: str, workdir: str, bin_dir: str, kill_after: int | None = None, started: Any = None, max_attempts: int = 3
) -> None:
    """Entry point of a child process (see the module docstring); ``started`` (an Event) is set on entry;
    ``max_attempts`` is the retry budget of a run it starts (a resumed run keeps the one in its manifest)."""
    work = Path(workdir)
    if started is not None:
        started.set()
    try:
        result, heads = asyncio.run(_run(mode, work, Path(bin_dir), kill_after, max_attempts))
    except BaseException:
        (work / "error.txt").write_text(traceback.format_exc())
        os._exit(EXIT_ERROR)
    out = {"phase": str(result.phase), "final": result.final_snapshot_id, "heads": heads}
    tmp = work / "result.json.tmp"
    tmp.write_text(json.dumps(out))
    os.replace(tmp, work / "result.json")  # atomic: a kill while reporting leaves no half-written result


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) not in (3, 4):
        sys.exit(__doc__)
    write_program(Path(args[2]))
    child_main(args[0], args[1], args[2], int(args[3]) if len(args) == 4 else None)
