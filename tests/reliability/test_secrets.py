"""Secrets never reach the store (ENGINE-SPEC §12).

Secrets (every substring the detector knows, and a 12-word mnemonic) are planted in the initial context, in state
writes, in facts (payloads and keys), in domain events (payloads and names), in error messages and details, in an
exec program's stdout, and in operation parameters. After each run, EVERY byte of the store folder is scanned: the
planted values occur zero times, and the run failed or redacted exactly as §12.2 says.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from engine._secrets import SECRET_SUBSTRINGS
from engine.config import EventProfile
from engine.context import DynContext, JsonContext
from engine.engine import RunPhase, StartRun
from engine.errors import ErrorCategory, MfmError, RunError, StateError
from engine.events import DomainEvent, RunCompleted, StateFailed
from engine.exec_transport import ExecTransportFactory
from engine.ids import RunId
from engine.io import IoCall, IoProvider
from engine.operations import OperationError, load_registry, prepare_run
from engine.recorder import EventRecorder
from engine.runtime import Engine
from engine.stores.fs import FsStore
from engine.testing import FakeClock, FakeSleeper, FnState, base_config, make_manifest, make_plan, store_manifest

MNEMONIC = "legal winner thank year wave sausage worth useful legal winner thank yellow"
TRIGGERS = list(SECRET_SUBSTRINGS)
"""Every substring the detector knows (its list is pinned independently by the N91 conformance test)."""
PLANTED = [f"{t}=plantedvalue{i}" for i, t in enumerate(TRIGGERS)] + [MNEMONIC]
"""Each one is detected (a trigger substring or the mnemonic), and each carries a unique marker."""
MARKERS = [f"plantedvalue{i}" for i in range(len(TRIGGERS))] + [MNEMONIC]
SCANNED: dict[str, int] = {"files": 0, "bytes": 0, "runs": 0}


def scan(root: Path) -> list[str]:
    """Every planted marker found anywhere under ``root`` (every file, every byte, case-insensitively)."""
    found: list[str] = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            data = (Path(dirpath) / name).read_bytes().lower()
            SCANNED["files"] += 1
            SCANNED["bytes"] += len(data)
            found += [f"{m!r} in {name}" for m in MARKERS if m.lower().encode() in data]
            found += [f"{t!r} in {name}" for t in TRIGGERS if t.encode() in data]
    return found


@pytest.fixture(scope="module", autouse=True)
def _report() -> Any:
    yield
    print(f"\nsecrets scan: {SCANNED} ({len(PLANTED)} planted values per surface), occurrences found: 0")


def engine_for(plan: Any, **kw: Any) -> Engine:
    return Engine(plan_resolver=lambda m: plan, clock=FakeClock(), sleeper=FakeSleeper(), **kw)


async def run_state(
    root: Path,
    fn: Any,
    *,
    initial: dict[str, Any] | None = None,
    transports: Any = None,
    profile: EventProfile = EventProfile.NORMAL,
    exec_allowlist: tuple[str, ...] = ("/bin/", "/usr/bin/"),
) -> tuple[FsStore, RunPhase | MfmError, list[Any]]:
    """Start a one-state run; return its phase (or the error ``start`` raised) and its events."""
    store = FsStore(root)
    plan = make_plan([("s0", FnState(fn=fn))])
    cfg = base_config(exec_allowlist=exec_allowlist, event_profile=profile)
    manifest = make_manifest(cfg)
    mid = await store_manifest(store.stores, manifest)
    run = StartRun(
        manifest=manifest, manifest_id=mid, plan=plan, run_config=cfg, initial_context=JsonContext(initial or {})
    )
    outcome: RunPhase | MfmError
    try:
        outcome = (await engine_for(plan, transports=transports).start(store.stores, run)).phase
    except MfmError as exc:
        outcome = exc
    (run_id,) = await store.events.list_runs()
    envs = await store.events.read_range(run_id, 1)
    SCANNED["runs"] += 1
    return store, outcome, envs


def failed_with(envs: list[Any]) -> StateFailed:
    failures = [e.event for e in envs if isinstance(e.event, StateFailed)]
    assert failures, "the state did not fail"
    return failures[-1]


@pytest.mark.parametrize("secret", PLANTED)
async def test_initial_context_aborts_start_before_anything_is_written(tmp_path: Path, secret: str) -> None:
    store = FsStore(tmp_path / "store")
    plan = make_plan([("s0", FnState(fn=_noop))])
    cfg = base_config()
    manifest = make_manifest(cfg)
    mid = await store_manifest(store.stores, manifest)
    run = StartRun(
        manifest=manifest,
        manifest_id=mid,
        plan=plan,
        run_config=cfg,
        initial_context=JsonContext({"config": {"note": secret}}),
    )
    with pytest.raises(MfmError) as info:
        await engine_for(plan).start(store.stores, run)
    assert info.value.code == "secrets_detected"
    assert await store.events.list_runs() == []
    assert scan(tmp_path) == []


async def _noop(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
    return None


@pytest.mark.parametrize("secret", PLANTED)
async def test_state_write_fails_the_attempt_and_nothing_is_written(tmp_path: Path, secret: str) -> None:
    async def write(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        ctx.write("out", {"nested": [1, {"v": secret}]})

    _, outcome, envs = await run_state(tmp_path / "store", write)
    # §8: a secret in the dumped context is the engine's own error: the invocation aborts (RunError), the
    # attempt stays open for the next resume, and the snapshot is never written.
    assert isinstance(outcome, RunError) and outcome.code == "secrets_detected"
    assert [type(e.event).__name__ for e in envs] == ["RunStarted", "StateEntered"]
    assert scan(tmp_path) == []


@pytest.mark.parametrize("secret", PLANTED)
async def test_secret_as_context_key_is_refused_too(tmp_path: Path, secret: str) -> None:
    async def write(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        ctx.write(secret, 1)

    _, outcome, envs = await run_state(tmp_path / "store", write)
    # §8: a secret in the dumped context is the engine's own error: the invocation aborts (RunError), the
    # attempt stays open for the next resume, and the snapshot is never written.
    assert isinstance(outcome, RunError) and outcome.code == "secrets_detected"
    assert [type(e.event).__name__ for e in envs] == ["RunStarted", "StateEntered"]
    assert scan(tmp_path) == []


@pytest.mark.parametrize("where", ["payload", "key"])
@pytest.mark.parametrize("secret", PLANTED)
async def test_facts_with_secrets_are_not_recorded(tmp_path: Path, secret: str, where: str) -> None:
    async def record(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        if where == "payload":
            await io.record_value("fact:plain", {"v": secret})
        else:
            await io.record_value(secret, {"v": 1})

    _, outcome, envs = await run_state(tmp_path / "store", record)
    assert outcome is RunPhase.FAILED
    failure = failed_with(envs)
    assert failure.error.code == "secrets_detected"
    assert not any(getattr(e.event, "name", None) == "fact_recorded" for e in envs)
    assert scan(tmp_path) == []


@pytest.mark.parametrize("profile", [EventProfile.NORMAL, EventProfile.MINIMAL])
@pytest.mark.parametrize("where", ["payload", "name"])
@pytest.mark.parametrize("secret", PLANTED)
async def test_domain_events_with_secrets_are_refused(
    tmp_path: Path, secret: str, where: str, profile: EventProfile
) -> None:
    async def emit(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        if where == "payload":
            await rec.emit(DomainEvent(name="note", payload={"text": secret}))
        else:
            await rec.emit(DomainEvent(name=secret, payload={}))

    _, outcome, envs = await run_state(tmp_path / "store", emit, profile=profile)
    if profile == EventProfile.MINIMAL:  # §9: Minimal drops the event before validation, silently
        assert outcome is RunPhase.COMPLETED
    else:  # Normal: the handler gets domain_event_invalid and nothing of that call is appended
        assert outcome is RunPhase.FAILED
        assert failed_with(envs).error.code == "domain_event_invalid"
    assert not any(isinstance(e.event, DomainEvent) for e in envs)
    assert scan(tmp_path) == []


@pytest.mark.parametrize("secret", PLANTED)
async def test_error_messages_and_details_are_redacted(tmp_path: Path, secret: str) -> None:
    async def boom(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        message = secret if secret == MNEMONIC else f"upstream said: {secret}"  # "said:" is no mnemonic word
        raise StateError.new("upstream_rejected", message, category=ErrorCategory.UNKNOWN, details={"echo": secret})

    _, outcome, envs = await run_state(tmp_path / "store", boom)
    assert outcome is RunPhase.FAILED
    error = failed_with(envs).error
    assert error.code == "upstream_rejected"  # the code is kept (§12.3) ...
    assert error.message == "error details redacted" and error.info.details is None  # ... the rest is not
    assert scan(tmp_path) == []


async def test_clean_error_details_are_dropped_but_clean_messages_kept(tmp_path: Path) -> None:
    async def boom(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        raise StateError.new("plain", "nothing to hide", category=ErrorCategory.UNKNOWN, details={"k": "v"})

    _, _, envs = await run_state(tmp_path / "store", boom)
    error = failed_with(envs).error
    assert error.message == "nothing to hide" and error.info.details is None


@pytest.mark.parametrize("secret", PLANTED)
async def test_exec_stdout_with_secrets_is_never_recorded_or_echoed(tmp_path: Path, secret: str) -> None:
    script = tmp_path / "leak.sh"
    script.write_text(f'#!/bin/sh\nprintf \'%s\' \'{{"token":"{secret}"}}\'\nexit "$1"\n')
    script.chmod(0o700)

    def request(code: str) -> IoCall:
        return IoCall(
            namespace="exec",
            request={"kind": "run_program_v1", "program_path": str(script), "argv": [code]},
            fact_key=f"leak:{code}",
        )

    async def call(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        with pytest.raises(MfmError) as refused:  # exit 0: its JSON would be recorded as a fact
            await io.call(request("0"))
        assert refused.value.code == "secrets_detected"
        assert secret.lower() not in refused.value.one_line().lower()
        await io.call(request("3"))  # exit 3: exec_failed, whose message and details never echo stdout

    factory = ExecTransportFactory([str(tmp_path) + "/", os.path.realpath("/bin/sh")])
    store_root = tmp_path / "store"
    _, outcome, envs = await run_state(
        store_root, call, transports=[factory], exec_allowlist=(str(tmp_path) + "/", os.path.realpath("/bin/sh"))
    )
    assert outcome is RunPhase.FAILED
    error = failed_with(envs).error
    assert error.code == "exec_failed"
    assert secret.lower() not in error.message.lower() and error.info.details is None
    assert not any(getattr(e.event, "name", None) == "fact_recorded" for e in envs)
    assert scan(store_root) == []


@pytest.mark.parametrize("secret", PLANTED)
async def test_operation_parameters_with_secrets_store_nothing(tmp_path: Path, secret: str) -> None:
    store = FsStore(tmp_path / "store")
    registry = load_registry(["engine.demo_ops"], entry_points=False)
    with pytest.raises(OperationError) as info:
        await prepare_run(
            store.stores,
            registry,
            "demo_side_effect",
            {"folder": "/tmp/x", "content": secret},
            run_id=RunId.new_v4(),
        )
    assert info.value.code == "secrets_detected"
    assert scan(tmp_path) == []


async def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The scanner's own control: a secret written by hand is found."""
    (tmp_path / "leak.txt").write_text(PLANTED[0].upper())
    assert scan(tmp_path) == [f"{MARKERS[0]!r} in leak.txt", f"{TRIGGERS[0]!r} in leak.txt"]


def test_run_completed_carries_no_error_text() -> None:
    """RunCompleted has only a status and a snapshot id: nothing a secret could ride in."""
    assert set(RunCompleted.model_fields) == {"status", "final_snapshot_id"}
    assert issubclass(RunError, MfmError)


# ---------------------------------------------------------------------------------------------
# worker.log: what a worker process prints passes the same guard (issue 13 item 7)
# ---------------------------------------------------------------------------------------------

LEAK_OPS = """
import glob, json, os, signal, sys
from pydantic import BaseModel
from engine.config import Duration, Fixed, RetryPolicy, RunConfig
from engine.ids import OpId
from engine.meta import StateMeta
from engine.operations import Operation
from engine.state import StateOutcome
from engine.testing import make_plan

PLANTED = json.loads(%r)

class Params(BaseModel):
    how: str

class Leak:
    def __init__(self, how):
        self.how = how
    def meta(self):
        return StateMeta()
    async def handle(self, ctx, io, rec):
        if self.how == "exit":  # the issue's case: message and traceback
            raise SystemExit("\\n".join(PLANTED))
        if self.how == "print":
            for secret in PLANTED:
                print(secret, flush=True)
                os.write(1, secret.encode() + b"\\n")
                os.write(2, b"stderr: " + secret.encode() + b"\\n")
            os.write(1, b"password:\\n" + PLANTED[0].split("=")[1].encode() + b"\\n")  # a value on the next line
            sys.stdout.write(PLANTED[1])  # no newline: the last, partial line at exit
            return StateOutcome()
        if self.how == "rawlog":  # a log written unguarded (an older worker): the CLI must not repeat it
            for log in glob.glob(os.path.join(os.environ["LEAK_STORE"], "runs", "*", "worker.log")):
                with open(log, "a") as f:
                    f.write(PLANTED[0] + "\\n")
            os.kill(os.getpid(), signal.SIGKILL)
        raise ValueError(self.how)

OPERATIONS = [
    Operation(
        op_id=OpId("leak"),
        version="1",
        description="leaks secrets to its output",
        params_model=Params,
        build_plan=lambda p, env: make_plan([("leak", Leak(p.how))], op_id="leak"),
        run_config=RunConfig(retry_policy=RetryPolicy(max_attempts=1, backoff=Fixed(delay=Duration.from_millis(0)))),
    )
]
"""


def _mfm_leak(tmp_path: Path, how: str) -> tuple[Path, Any]:
    """``mfm start leak -p how=… --wait`` in a subprocess (its worker is a detached process, as in use)."""
    import json
    import subprocess
    import sys

    ops = tmp_path / "leak_ops.py"
    ops.write_text(LEAK_OPS % json.dumps(PLANTED))
    store = tmp_path / "store"
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in ("MFM_STORE",)}
    env.update(PYTHONPATH=str(root), HOME=str(tmp_path), LEAK_STORE=str(store))
    argv = [sys.executable, "-m", "mfm_tui", "--store", str(store), "--ops", str(ops)]
    res = subprocess.run(
        [*argv, "start", "leak", "-p", f"how={how}", "--wait"], capture_output=True, env=env, timeout=120, check=False
    )
    return store, res


def _found_in(data: bytes) -> list[str]:
    low = data.lower()
    return [m for m in MARKERS if m.lower().encode() in low] + [t for t in TRIGGERS if t.encode() in low]


def test_a_handler_exiting_with_secrets_leaves_none_in_worker_log_or_the_cli_error(tmp_path: Path) -> None:
    store, res = _mfm_leak(tmp_path, "exit")
    assert res.returncode == 1 and res.stderr.startswith(b"error[worker_lost]: "), res.stderr
    (log,) = store.glob("runs/*/worker.log")
    assert b"SystemExit" in log.read_bytes() and b"line withheld" in log.read_bytes()  # the log still tells
    assert _found_in(res.stdout + res.stderr) == []
    assert scan(store) == []


def test_what_a_handler_prints_or_writes_to_fds_1_and_2_is_guarded(tmp_path: Path) -> None:
    store, res = _mfm_leak(tmp_path, "print")
    assert res.returncode == 0, res.stderr
    (log,) = store.glob("runs/*/worker.log")
    text = log.read_text()
    assert text.count("line withheld") == 3 * len(PLANTED) + 3  # each, thrice; `password:` and its value; the tail
    assert "stderr:" not in text and "run " in text  # the worker's own lines are kept
    assert scan(store) == []


def test_the_cli_does_not_repeat_a_secret_from_an_unguarded_log(tmp_path: Path) -> None:
    store, res = _mfm_leak(tmp_path, "rawlog")
    assert res.returncode == 1 and res.stderr.startswith(b"error[worker_lost]: "), res.stderr
    (log,) = store.glob("runs/*/worker.log")
    assert PLANTED[0].encode() in log.read_bytes()  # planted behind the guard's back, as an older worker's log
    assert b"line withheld" in res.stderr and _found_in(res.stdout + res.stderr) == []
