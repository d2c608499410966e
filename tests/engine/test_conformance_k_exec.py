"""CONFORMANCE K70–K80 and Z/C2: the exec transport (ENGINE-SPEC §15, §0.6, §0.8).

Test programs are ``#!/bin/sh`` scripts (mode 0755) in a temp dir whose canonical path + ``/`` is
the allow prefix, with the canonical ``/bin/sh`` allowed too (a script's interpreter must be).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from engine.config import RunConfig
from engine.errors import ErrorCategory, IoError, IoErrorKind
from engine.exec_transport import (
    DEFAULT_TIMEOUT_MS,
    ExecTransportFactory,
    effective_allowlist,
    parse_exec_request,
    path_is_under,
)
from engine.ids import RunId
from engine.process_exec import ProcessEvent
from engine.stores.memory import MemoryStore
from engine.testing import base_config, sid
from engine.transport import LiveTransport, TransportContext
from tests.engine.process_helpers import Bg, assert_gone

MiB = 1_048_576
SH = os.path.realpath("/bin/sh")  # the scripts' interpreter must be allowed too (issue 13 item 9)


def ctx(config: RunConfig | None = None) -> TransportContext:
    return TransportContext(
        stores=MemoryStore().stores,
        run_id=RunId.new_v4(),
        state_id=sid("s1"),
        attempt=0,
        run_config=config if config is not None else base_config(),
    )


def script(directory: Path, name: str, body: str, mode: int = 0o755) -> str:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return str(path)


def req(program_path: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "run_program_v1", "program_path": program_path, **fields}


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    return Path(os.path.realpath(d))


class Recorder:
    def __init__(self) -> None:
        self.events: list[ProcessEvent] = []

    def __call__(self, event: ProcessEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[tuple[str, int | None]]:
        return [(e.kind, e.signal if e.kind == "signal_sent" else e.returncode) for e in self.events]

    @property
    def pid(self) -> int:
        return next(e.pid for e in self.events if e.kind == "spawned")


def transport_for(bin_dir: Path, **kwargs: Any) -> tuple[LiveTransport, Recorder]:
    rec = Recorder()
    factory = ExecTransportFactory([str(bin_dir) + "/", SH], observer=rec, **kwargs)
    return factory.make(ctx()), rec


async def call_err(transport: LiveTransport, request: Any) -> IoError:
    with pytest.raises(IoError) as err:
        await transport.call("exec", request)
    return err.value


# --- K70-K72: policy and request shape ---------------------------------------------------------


async def test_k70_default_policy_rejects_outside_nix_store() -> None:
    """K70: default factory, /bin/echo → exec_program_not_allowed."""
    err = await call_err(ExecTransportFactory().make(ctx()), req("/bin/echo"))
    assert err.kind is IoErrorKind.OTHER
    assert err.code == "exec_program_not_allowed"
    assert err.info.category is ErrorCategory.UNKNOWN
    assert err.retryable is False


async def test_k71_missing_program_even_if_allowlisted() -> None:
    """K71: policy /nix/store/, missing program → exec_program_missing."""
    transport = ExecTransportFactory(["/nix/store/"]).make(ctx())
    err = await call_err(transport, req("/nix/store/does-not-exist/bin/app"))
    assert err.kind is IoErrorKind.OTHER
    assert err.code == "exec_program_missing"


@pytest.mark.parametrize(
    "request_value",
    [
        "not an object",
        ["run_program_v1"],
        None,
        {"program_path": "/bin/true"},
        {"kind": "run_program_v2", "program_path": "/bin/true"},
        {"kind": "run_program_v1"},
        {"kind": "run_program_v1", "program_path": 7},
        {"kind": "run_program_v1", "program_path": "/bin/true", "timeout_ms": -1},
        {"kind": "run_program_v1", "program_path": "/bin/true", "timeout_ms": "20"},
        {"kind": "run_program_v1", "program_path": "/bin/true", "timeout_ms": True},
    ],
)
async def test_k72_invalid_request_shape(request_value: Any) -> None:
    """K72: not an object / missing kind / kind run_program_v2 / missing program_path → exec_request_invalid."""
    err = await call_err(ExecTransportFactory().make(ctx()), request_value)
    assert err.kind is IoErrorKind.OTHER
    assert err.code == "exec_request_invalid"


def test_k72_request_defaults_and_lenient_fields() -> None:
    parsed = parse_exec_request(
        {
            "kind": "run_program_v1",
            "program_path": "/p",
            "argv": ["a", 1, None, "b", {"x": 1}],
            "env": {"A": "1", "B": 2, "C": None},
        }
    )
    assert parsed.argv == ("a", "b")
    assert parsed.env == (("A", "1"),)
    assert parsed.stdin == b"null"
    assert parsed.timeout_ms == DEFAULT_TIMEOUT_MS == 300_000
    assert parse_exec_request(req("/p", stdin_json={"k": ["é", 1]})).stdin == '{"k":["é",1]}'.encode()


def test_stdin_json_is_written_like_serde_json_with_sorted_keys() -> None:
    """``stdin_json`` is a serde_json ``Value``: its object keys are written in code-point order, at every level."""
    stdin = {"b": [{"z": 1, "y": {"\U0001f600": 0, "\ue000": 1}}], "a": None}
    expected = '{"a":null,"b":[{"y":{"\ue000":1,"\U0001f600":0},"z":1}]}'.encode()
    assert parse_exec_request(req("/p", stdin_json=stdin)).stdin == expected


# --- resolution and allowlist -------------------------------------------------------------------


async def test_not_executable(bin_dir: Path) -> None:
    transport, _ = transport_for(bin_dir)
    path = script(bin_dir, "plain.sh", "exit 0", mode=0o644)
    err = await call_err(transport, req(path))
    assert err.code == "exec_program_not_executable"
    assert err.kind is IoErrorKind.OTHER


async def test_symlink_inside_allowed_dir_pointing_outside_is_refused(tmp_path: Path, bin_dir: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = script(outside, "evil.sh", "printf '{}'")
    link = bin_dir / "link.sh"
    link.symlink_to(target)
    transport, rec = transport_for(bin_dir)
    err = await call_err(transport, req(str(link)))
    assert err.code == "exec_program_not_allowed"
    assert rec.events == []  # never spawned
    # `..` escaping the allowed dir is refused too.
    err = await call_err(transport, req(str(bin_dir) + "/../outside/evil.sh"))
    assert err.code == "exec_program_not_allowed"


async def test_symlink_inside_allowed_dir_pointing_inside_is_admitted(bin_dir: Path) -> None:
    target = script(bin_dir, "real.sh", "cat >/dev/null; printf '{\"r\":1}'")
    (bin_dir / "alias.sh").symlink_to(target)
    transport, _ = transport_for(bin_dir)
    assert await transport.call("exec", req(str(bin_dir / "alias.sh"))) == {"r": 1}


async def test_allowlist_matches_whole_path_components(tmp_path: Path) -> None:
    base = Path(os.path.realpath(tmp_path))
    (base / "allow").mkdir()
    (base / "allowfoo").mkdir()
    path = script(base / "allowfoo", "x.sh", "printf '{}'")
    transport = ExecTransportFactory([str(base / "allow") + "/"]).make(ctx())
    assert (await call_err(transport, req(path))).code == "exec_program_not_allowed"
    assert path_is_under("/nix/store/abc/bin/app", "/nix/store/")
    assert path_is_under("/nix/store/abc/bin/app", "/nix/store")
    assert not path_is_under("/nix/storefoo/x", "/nix/store/")
    assert not path_is_under("/nix/storefoo/x", "/nix/store")
    assert not path_is_under("/nix/store/x", "")
    assert not path_is_under("/nix/store/x", "nix/store")


async def test_run_level_allowlist_overrides_worker_level(tmp_path: Path) -> None:
    base = Path(os.path.realpath(tmp_path))
    worker_dir, run_dir = base / "worker", base / "run"
    worker_dir.mkdir()
    run_dir.mkdir()
    in_worker = script(worker_dir, "w.sh", "cat >/dev/null; printf '{\"w\":1}'")
    in_run = script(run_dir, "r.sh", "cat >/dev/null; printf '{\"r\":1}'")
    factory = ExecTransportFactory([str(worker_dir) + "/", SH])

    worker_only = factory.make(ctx())
    assert await worker_only.call("exec", req(in_worker)) == {"w": 1}
    assert (await call_err(worker_only, req(in_run))).code == "exec_program_not_allowed"

    run_cfg = base_config(exec_allowlist=(str(run_dir) + "/", SH))
    overridden = factory.make(ctx(run_cfg))
    assert await overridden.call("exec", req(in_run)) == {"r": 1}
    assert (await call_err(overridden, req(in_worker))).code == "exec_program_not_allowed"

    nothing = factory.make(ctx(base_config(exec_allowlist=())))
    assert (await call_err(nothing, req(in_worker))).code == "exec_program_not_allowed"


def test_effective_allowlist_order() -> None:
    assert effective_allowlist(ctx(), None) == ("/nix/store/",)
    assert effective_allowlist(ctx(), ["/opt/a/"]) == ("/opt/a/",)
    assert effective_allowlist(ctx(base_config(exec_allowlist=("/opt/b/",))), ["/opt/a/"]) == ("/opt/b/",)


# --- K74-K79: running -------------------------------------------------------------------------


async def test_k74_non_zero_exit_metadata(bin_dir: Path) -> None:
    """K74: drains stdin then exits 42 → Transport exec_failed {program_path, exit_code 42, signal null}."""
    transport, rec = transport_for(bin_dir)
    path = script(bin_dir, "exit42.sh", "cat >/dev/null\nexit 42")
    err = await call_err(transport, req(path))
    assert err.kind is IoErrorKind.TRANSPORT
    assert err.code == "exec_failed"
    assert err.retryable is False
    assert err.info.details == {"program_path": path, "exit_code": 42, "signal": None}
    assert_gone(rec.pid)


async def test_k74_program_path_in_details_is_canonical(tmp_path: Path, bin_dir: Path) -> None:
    path = script(bin_dir, "exit3.sh", "cat >/dev/null\nexit 3")
    (tmp_path / "via").symlink_to(bin_dir, target_is_directory=True)
    transport, _ = transport_for(bin_dir)
    for requested in (str(bin_dir) + "/./exit3.sh", str(tmp_path / "via" / "exit3.sh")):
        err = await call_err(transport, req(requested))
        assert err.info.details == {"program_path": path, "exit_code": 3, "signal": None}


async def test_killed_by_signal_reports_signal(bin_dir: Path) -> None:
    transport, _ = transport_for(bin_dir)
    path = script(bin_dir, "suicide.sh", "cat >/dev/null\nkill -9 $$")
    err = await call_err(transport, req(path))
    assert err.code == "exec_failed"
    assert err.info.details == {"program_path": path, "exit_code": None, "signal": signal.SIGKILL}


async def test_k75_timeout_kills_and_reaps(bin_dir: Path) -> None:
    """K75: looping script, timeout_ms 20 → Transport exec_timeout {program_path, timeout_ms: 20}; killed."""
    transport, rec = transport_for(bin_dir)
    path = script(bin_dir, "loop.sh", "while :; do :; done")
    err = await call_err(transport, req(path, timeout_ms=20))
    assert err.kind is IoErrorKind.TRANSPORT
    assert err.code == "exec_timeout"
    assert err.info.details == {"program_path": path, "timeout_ms": 20}
    assert ("signal_sent", signal.SIGTERM) in rec.kinds()
    assert rec.kinds()[-1][0] == "reaped"
    assert_gone(rec.pid)


async def test_k76_timeout_covers_stdin_write(bin_dir: Path) -> None:
    """K76: looping script that never reads stdin; 256 KiB stdin; timeout_ms 20 → exec_timeout."""
    transport, rec = transport_for(bin_dir)
    path = script(bin_dir, "deaf.sh", "while :; do :; done")
    err = await call_err(transport, req(path, stdin_json="x" * (256 * 1024), timeout_ms=20))
    assert err.code == "exec_timeout"
    assert_gone(rec.pid)


async def test_k77_stdin_limit_never_spawns(bin_dir: Path) -> None:
    """K77: stdin_json = 1,048,577 `a`s → Transport exec_stdin_too_large, max 1048576, not spawned."""
    transport, rec = transport_for(bin_dir)
    path = script(bin_dir, "ok.sh", "cat >/dev/null; printf '{}'")
    err = await call_err(transport, req(path, stdin_json="a" * (MiB + 1)))
    assert err.kind is IoErrorKind.TRANSPORT
    assert err.code == "exec_stdin_too_large"
    assert err.info.details == {"program_path": path, "max_stdin_bytes": MiB, "stdin_bytes": MiB + 3}
    assert rec.events == []


async def test_k78_stdout_overflow(bin_dir: Path) -> None:
    """K78: script prints 1,200,000 zero bytes → Transport exec_stdout_too_large."""
    transport, rec = transport_for(bin_dir)
    path = script(bin_dir, "flood.sh", "cat >/dev/null\nhead -c 1200000 /dev/zero")
    err = await call_err(transport, req(path))
    assert err.kind is IoErrorKind.TRANSPORT
    assert err.code == "exec_stdout_too_large"
    assert err.info.details == {"program_path": path, "max_stdout_bytes": MiB, "stdout_bytes": 1_200_000}
    assert_gone(rec.pid)


async def test_stderr_overflow(bin_dir: Path) -> None:
    transport, _ = transport_for(bin_dir)
    path = script(bin_dir, "flood_err.sh", "cat >/dev/null\nhead -c 1100000 /dev/zero >&2\nprintf '{}'")
    err = await call_err(transport, req(path))
    assert err.code == "exec_stderr_too_large"
    assert err.info.details == {"program_path": path, "max_stderr_bytes": MiB, "stderr_bytes": 1_100_000}


async def test_stdout_checked_before_exit_status(bin_dir: Path) -> None:
    transport, _ = transport_for(bin_dir)
    path = script(bin_dir, "flood_fail.sh", "cat >/dev/null\nhead -c 1200000 /dev/zero\nexit 9")
    assert (await call_err(transport, req(path))).code == "exec_stdout_too_large"


async def test_k79_success_json_and_env(bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """K79: `{"ok":1}` response; `not json` → exec_stdout_invalid_json; env added to the inherited one."""
    monkeypatch.setenv("MFM_K79_INHERITED", "kept")
    transport, _ = transport_for(bin_dir)
    ok = script(bin_dir, "ok.sh", "cat >/dev/null; printf '{\"ok\":1}'")
    assert await transport.call("exec", req(ok)) == {"ok": 1}

    bad = script(bin_dir, "bad.sh", "cat >/dev/null; printf 'not json'")
    err = await call_err(transport, req(bad))
    assert err.kind is IoErrorKind.OTHER
    assert err.code == "exec_stdout_invalid_json"
    assert err.info.category is ErrorCategory.PARSING_INPUT

    env = script(
        bin_dir,
        "env.sh",
        'cat >/dev/null; printf \'{"foo":"%s","inherited":"%s"}\' "$FOO" "$MFM_K79_INHERITED"',
    )
    assert await transport.call("exec", req(env, env={"FOO": "bar", "IGNORED": 5})) == {
        "foo": "bar",
        "inherited": "kept",
    }


async def test_k79_stdin_argv_and_cwd(bin_dir: Path) -> None:
    transport, _ = transport_for(bin_dir)
    echo = script(
        bin_dir,
        "echo.sh",
        'in=$(cat)\nprintf \'{"stdin":%s,"argc":%d,"a1":"%s","a2":"%s","cwd":"%s"}\' "$in" "$#" "$1" "$2" "$(pwd -P)"',
    )
    out = await transport.call("exec", req(echo, argv=["one", 2, "two"], stdin_json={"q": [1, "x"]}))
    assert out == {"stdin": {"q": [1, "x"]}, "argc": 2, "a1": "one", "a2": "two", "cwd": os.path.realpath(os.getcwd())}


async def test_k79_stdout_floats_parse_and_nan_is_invalid(bin_dir: Path) -> None:
    transport, _ = transport_for(bin_dir)
    floats = script(bin_dir, "floats.sh", "cat >/dev/null; printf '{\"x\":1.5}'")
    assert await transport.call("exec", req(floats)) == {"x": 1.5}
    negative_zero = script(bin_dir, "negzero.sh", "cat >/dev/null; printf '{\"x\":-0}'")
    assert repr(await transport.call("exec", req(negative_zero))) == "{'x': -0.0}"  # a float, as serde_json reads it
    nan = script(bin_dir, "nan.sh", "cat >/dev/null; printf '{\"x\":NaN}'")
    assert (await call_err(transport, req(nan))).code == "exec_stdout_invalid_json"
    latin1 = script(bin_dir, "latin1.sh", "cat >/dev/null; printf '\"\\351\"'")
    assert (await call_err(transport, req(latin1))).code == "exec_stdout_invalid_json"
    empty = script(bin_dir, "empty.sh", "cat >/dev/null")
    assert (await call_err(transport, req(empty))).code == "exec_stdout_invalid_json"


async def test_broken_pipe_with_exit_zero_is_ignored(bin_dir: Path) -> None:
    transport, _ = transport_for(bin_dir)
    path = script(bin_dir, "noread.sh", "printf '{\"done\":true}'")
    assert await transport.call("exec", req(path, stdin_json="z" * (512 * 1024))) == {"done": True}


async def test_broken_pipe_with_non_zero_exit_is_exec_failed(bin_dir: Path) -> None:
    transport, _ = transport_for(bin_dir)
    path = script(bin_dir, "noread_fail.sh", "exit 7")
    err = await call_err(transport, req(path, stdin_json="z" * (512 * 1024)))
    assert err.code == "exec_failed"
    assert err.info.details == {"program_path": path, "exit_code": 7, "signal": None}


async def test_spawn_failure(bin_dir: Path) -> None:
    """An executable file the kernel cannot run (no interpreter) → exec_spawn_failed."""
    transport, _ = transport_for(bin_dir)
    path = bin_dir / "broken.sh"
    path.write_text(f"#!{bin_dir}/nonexistent-interpreter\n")  # allowed, so the kernel is the one to refuse
    path.chmod(0o755)
    err = await call_err(transport, req(str(path)))
    assert err.kind is IoErrorKind.TRANSPORT
    assert err.code == "exec_spawn_failed"
    assert err.info.details == {"program_path": str(path)}


async def test_error_details_never_leak_io(bin_dir: Path) -> None:
    transport, _ = transport_for(bin_dir)
    path = script(bin_dir, "leaky.sh", "cat >/dev/null\necho OUTMARK\necho ERRMARK >&2\nexit 1")
    err = await call_err(transport, req(path, argv=["ARGVMARK"], env={"E": "ENVMARK"}, stdin_json="STDINMARK"))
    assert err.code == "exec_failed"
    text = f"{err} {err.info.model_dump_json()} {err.to_wire()!r}"
    for marker in ("OUTMARK", "ERRMARK", "ARGVMARK", "ENVMARK", "STDINMARK"):
        assert marker not in text


# --- K80 (transport side) and Z/C2: cancellation ----------------------------------------------


async def wait_for_pid_file(path: Path, task: asyncio.Task[Any]) -> int:
    """Poll (yielding to the loop) until the script has written its pid, or fail if the call ended."""
    for _ in range(2000):
        if path.exists():
            return int(path.read_text())
        assert not task.done(), "exec call ended before the child started"
        await asyncio.sleep(0.005)
    raise AssertionError("the child never wrote its pid file")


async def test_c2_cancel_in_flight_exec_sends_sigterm_and_reaps(bin_dir: Path, bg: Bg) -> None:
    """Z/C2: cancelling the task running an exec of a 60 s sleeper → SIGTERM to the child, reaped, re-raised."""
    transport, rec = transport_for(bin_dir, grace_period_s=5.0)
    pid_file = bin_dir / "sleeper.pid"
    path = script(bin_dir, "sleeper.sh", f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}\nsleep 60")
    task = bg(transport.call("exec", req(path)))
    pid = await wait_for_pid_file(pid_file, task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pid == rec.pid
    assert rec.kinds() == [("spawned", None), ("signal_sent", signal.SIGTERM), ("reaped", -signal.SIGTERM)]
    assert_gone(pid)


async def test_c2_cancel_child_ignoring_sigterm_gets_sigkill(bin_dir: Path, bg: Bg) -> None:
    """Z/C2: a child that traps and ignores TERM is SIGKILLed after the grace period, then reaped."""
    transport, rec = transport_for(bin_dir, grace_period_s=0.2)
    pid_file = bin_dir / "stubborn.pid"
    path = script(
        bin_dir, "stubborn.sh", f"trap '' TERM\necho $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}\nsleep 60"
    )
    task = bg(transport.call("exec", req(path)))
    pid = await wait_for_pid_file(pid_file, task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.kinds() == [
        ("spawned", None),
        ("signal_sent", signal.SIGTERM),
        ("signal_sent", signal.SIGKILL),
        ("reaped", -signal.SIGKILL),
    ]
    assert_gone(pid)


async def test_c2_wait_for_cancelled_exec_with_timeout_wrapper(bin_dir: Path) -> None:
    """An outer asyncio timeout (cancellation by the runtime) is cleaned up the same way."""
    transport, rec = transport_for(bin_dir, grace_period_s=5.0)
    path = script(bin_dir, "sleeper2.sh", "sleep 60")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await transport.call("exec", req(path))
    assert rec.kinds()[-1] == ("reaped", -signal.SIGTERM)
    assert_gone(rec.pid)
