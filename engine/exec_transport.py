"""The exec transport: run an allowlisted local program (namespace group ``exec``, ENGINE-SPEC §15, §0.8).

Request (a JSON object)::

    {"kind": "run_program_v1", "program_path": "/nix/store/…/bin/app",
     "argv": ["--flag"], "stdin_json": {...}, "timeout_ms": 300000, "env": {"K": "V"}}

The program's stdout, parsed as JSON, is the response. The program path is resolved (exists →
executable → canonical path) and must lie, by whole path components, under one of the effective
allow prefixes: the run's ``RunConfig.exec_allowlist`` when set, else the factory's (worker-level)
list, else ``("/nix/store/",)``. Error details never carry stdout, stderr, argv, env or stdin.
Cancelling the calling task kills the child's process group (SIGTERM, SIGKILL after the grace
period), reaps it and re-raises ``asyncio.CancelledError``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import JsonValue

from engine._wire import compact_json, parse_json, sorted_json
from engine.errors import ErrorCategory, IoError
from engine.process_exec import (
    DEFAULT_GRACE_PERIOD_S,
    ProcessObserver,
    ProcessResult,
    ProcessSpawnError,
    ProcessTimeoutError,
    ProcessWaitError,
    run_process,
)
from engine.transport import LiveTransport, TransportContext

__all__ = [
    "DEFAULT_EXEC_ALLOWLIST",
    "DEFAULT_TIMEOUT_MS",
    "EXEC_NAMESPACE_GROUP",
    "MAX_STDERR_BYTES",
    "MAX_STDIN_BYTES",
    "MAX_STDOUT_BYTES",
    "RUN_PROGRAM_V1",
    "ExecRequest",
    "ExecTransport",
    "ExecTransportFactory",
    "effective_allowlist",
    "parse_exec_request",
    "path_is_under",
]

EXEC_NAMESPACE_GROUP = "exec"
RUN_PROGRAM_V1 = "run_program_v1"
DEFAULT_TIMEOUT_MS = 300_000
MAX_STDIN_BYTES = 1_048_576
MAX_STDOUT_BYTES = 1_048_576
MAX_STDERR_BYTES = 1_048_576
DEFAULT_EXEC_ALLOWLIST: tuple[str, ...] = ("/nix/store/",)


@dataclass(frozen=True, slots=True)
class ExecRequest:
    """A validated ``run_program_v1`` request (``stdin`` already serialized)."""

    program_path: str
    argv: tuple[str, ...]
    stdin: bytes
    timeout_ms: int
    env: tuple[tuple[str, str], ...]


def _invalid(message: str) -> IoError:
    return IoError.other("exec_request_invalid", message, category=ErrorCategory.PARSING_INPUT)


def parse_exec_request(request: Any) -> ExecRequest:
    """Validate the request shape (§15); any shape error is ``IoError.other`` ``exec_request_invalid``.

    Non-string ``argv`` items and non-string ``env`` values are dropped, as in the reference.
    """
    if not isinstance(request, dict):
        raise _invalid("exec request must be a JSON object")
    kind = request.get("kind")
    if kind is None:
        raise _invalid("exec request is missing `kind`")
    if kind != RUN_PROGRAM_V1:
        shown = kind if isinstance(kind, str) and len(kind) <= 64 else "<not shown>"
        raise _invalid(f"unsupported exec request kind {shown!r} (expected {RUN_PROGRAM_V1!r})")
    program_path = request.get("program_path")
    if not isinstance(program_path, str):
        raise _invalid("exec request is missing a string `program_path`")

    raw_argv = request.get("argv")
    if raw_argv is None:
        argv: tuple[str, ...] = ()
    elif isinstance(raw_argv, list):
        argv = tuple(a for a in raw_argv if isinstance(a, str))
    else:
        raise _invalid("exec request `argv` must be an array of strings")

    try:
        # serde_json writes the Value compactly, object keys sorted (ENGINE-SPEC §15; engine._wire)
        stdin = compact_json(sorted_json(request.get("stdin_json"))).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        raise _invalid("exec request `stdin_json` is not serializable as JSON") from None

    raw_timeout = request.get("timeout_ms")
    if raw_timeout is None:
        timeout_ms = DEFAULT_TIMEOUT_MS
    elif isinstance(raw_timeout, int) and not isinstance(raw_timeout, bool) and 0 <= raw_timeout < 2**64:
        timeout_ms = raw_timeout
    else:
        raise _invalid("exec request `timeout_ms` must be an unsigned integer (milliseconds)")

    raw_env = request.get("env")
    if raw_env is None:
        env: tuple[tuple[str, str], ...] = ()
    elif isinstance(raw_env, dict):
        env = tuple((k, v) for k, v in raw_env.items() if isinstance(k, str) and isinstance(v, str))
    else:
        raise _invalid("exec request `env` must be an object of strings")

    return ExecRequest(program_path=program_path, argv=argv, stdin=stdin, timeout_ms=timeout_ms, env=env)


def _components(path: str) -> list[str]:
    return [part for part in os.path.normpath(path).split(os.sep) if part]


def path_is_under(path: str, prefix: str) -> bool:
    """True when absolute ``path`` lies under absolute ``prefix`` by whole path components.

    ``/nix/store/`` admits ``/nix/store/x/bin/app`` but not ``/nix/storefoo/x``. A relative or
    empty prefix admits nothing.
    """
    if not prefix or not os.path.isabs(prefix) or not os.path.isabs(path):
        return False
    want = _components(prefix)
    have = _components(path)
    return have[: len(want)] == want


def effective_allowlist(context: TransportContext | None, worker_allowlist: Sequence[str] | None) -> tuple[str, ...]:
    """Run-level list when set, else the worker-level list, else ``("/nix/store/",)`` (§0.8)."""
    run_list = None if context is None else context.run_config.exec_allowlist
    if run_list is not None:
        return tuple(run_list)
    if worker_allowlist is not None:
        return tuple(worker_allowlist)
    return DEFAULT_EXEC_ALLOWLIST


def _resolve_program(program_path: str, allowlist: Sequence[str]) -> str:
    """Exists → executable (``access()`` on the requested path) → canonical → allowlisted."""
    details: dict[str, JsonValue] = {"program_path": program_path}
    try:
        exists = os.access(program_path, os.F_OK)
        executable = exists and os.access(program_path, os.X_OK)
    except (ValueError, OSError):  # embedded NUL, name too long …
        exists = executable = False
    if not exists:
        raise IoError.other("exec_program_missing", f"exec program does not exist: {program_path}", details=details)
    if not executable:
        raise IoError.other(
            "exec_program_not_executable", f"exec program is not executable: {program_path}", details=details
        )
    try:
        canonical = os.path.realpath(program_path, strict=True)
    except (OSError, ValueError):
        raise IoError.other(
            "exec_program_missing", f"exec program could not be canonicalized: {program_path}", details=details
        ) from None
    if not any(path_is_under(canonical, prefix) for prefix in allowlist):
        raise IoError.other(
            "exec_program_not_allowed",
            f"exec program {canonical} is not under an allowed prefix ({', '.join(allowlist) or 'none'})",
            details={"program_path": program_path, "canonical_path": canonical},
        )
    return canonical


def _transport_error(code: str, message: str, details: dict[str, Any]) -> IoError:
    return IoError.transport(code, message, details=details)


def _exit_failure(program: str, result: ProcessResult) -> IoError:
    how = f"exit code {result.exit_code}" if result.signal is None else f"signal {result.signal}"
    return _transport_error(
        "exec_failed",
        f"exec program {program} failed ({how})",
        {"program_path": program, "exit_code": result.exit_code, "signal": result.signal},
    )


def _outcome(program: str, result: ProcessResult, limits: tuple[int, int]) -> Any:
    """Checks 4–9 of §15, in order."""
    max_stdout, max_stderr = limits
    if result.stdout.overflowed:
        raise _transport_error(
            "exec_stdout_too_large",
            f"exec program {program} wrote more than {max_stdout} bytes to stdout",
            {"program_path": program, "max_stdout_bytes": max_stdout, "stdout_bytes": result.stdout.total_bytes},
        )
    if result.stderr.overflowed:
        raise _transport_error(
            "exec_stderr_too_large",
            f"exec program {program} wrote more than {max_stderr} bytes to stderr",
            {"program_path": program, "max_stderr_bytes": max_stderr, "stderr_bytes": result.stderr.total_bytes},
        )
    write_error = result.stdin_write_error
    if write_error is not None:
        if write_error.broken_pipe:
            if not result.success:
                raise _exit_failure(program, result)
        else:
            raise _transport_error(
                "exec_stdin_write_failed",
                f"writing stdin of exec program {program} failed ({write_error.kind})",
                {"program_path": program, "io_error_kind": write_error.kind},
            )
    close_error = result.stdin_close_error
    if close_error is not None and not close_error.broken_pipe:
        raise _transport_error(
            "exec_stdin_write_failed",
            f"closing stdin of exec program {program} failed ({close_error.kind})",
            {"program_path": program, "io_error_kind": close_error.kind},
        )
    if not result.success:
        raise _exit_failure(program, result)
    try:
        return parse_json(result.stdout.data)  # as serde_json reads it: -0 is a float, NaN is not JSON
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise IoError.other(
            "exec_stdout_invalid_json",
            f"exec program {program} did not print valid JSON on stdout",
            category=ErrorCategory.PARSING_INPUT,
            details={"program_path": program},
        ) from None


class ExecTransport:
    """One attempt's exec transport (made by ``ExecTransportFactory.make``)."""

    def __init__(self, factory: ExecTransportFactory, context: TransportContext | None) -> None:
        self._factory = factory
        self._context = context

    @property
    def allowlist(self) -> tuple[str, ...]:
        return effective_allowlist(self._context, self._factory.allowlist)

    async def call(self, namespace: str, request: Any) -> Any:
        f = self._factory
        req = parse_exec_request(request)
        program = _resolve_program(req.program_path, self.allowlist)
        if len(req.stdin) > f.max_stdin_bytes:
            raise _transport_error(
                "exec_stdin_too_large",
                f"stdin for exec program {program} is {len(req.stdin)} bytes (max {f.max_stdin_bytes})",
                {"program_path": program, "max_stdin_bytes": f.max_stdin_bytes, "stdin_bytes": len(req.stdin)},
            )
        env = dict(os.environ)
        env.update(req.env)
        try:
            result = await run_process(
                program,
                req.argv,
                stdin=req.stdin,
                env=env,
                timeout_s=req.timeout_ms / 1000,
                stdout_limit=f.max_stdout_bytes,
                stderr_limit=f.max_stderr_bytes,
                grace_period_s=f.grace_period_s,
                observer=f.observer,
            )
        except ProcessSpawnError:
            raise _transport_error(
                "exec_spawn_failed", f"exec program {program} could not be started", {"program_path": program}
            ) from None
        except ProcessTimeoutError:
            raise _transport_error(
                "exec_timeout",
                f"exec program {program} timed out after {req.timeout_ms} ms",
                {"program_path": program, "timeout_ms": req.timeout_ms},
            ) from None
        except ProcessWaitError:
            raise _transport_error(
                "exec_failed", f"waiting for exec program {program} failed", {"program_path": program}
            ) from None
        return _outcome(program, result, (f.max_stdout_bytes, f.max_stderr_bytes))


class ExecTransportFactory:
    """Makes exec transports (namespace group ``exec``).

    ``allowlist`` is the worker-level list of program path prefixes; a run's
    ``RunConfig.exec_allowlist`` overrides it; with neither, only ``/nix/store/`` is admitted.
    """

    def __init__(
        self,
        allowlist: Sequence[str] | None = None,
        *,
        namespace_group: str = EXEC_NAMESPACE_GROUP,
        grace_period_s: float = DEFAULT_GRACE_PERIOD_S,
        max_stdin_bytes: int = MAX_STDIN_BYTES,
        max_stdout_bytes: int = MAX_STDOUT_BYTES,
        max_stderr_bytes: int = MAX_STDERR_BYTES,
        observer: ProcessObserver | None = None,
    ) -> None:
        if isinstance(allowlist, str):
            raise TypeError("allowlist must be a sequence of path prefixes, not a single string")
        if grace_period_s < 0:
            raise ValueError("grace_period_s must be non-negative")
        self.allowlist: tuple[str, ...] | None = None if allowlist is None else tuple(allowlist)
        self._namespace_group = namespace_group
        self.grace_period_s = grace_period_s
        self.max_stdin_bytes = max_stdin_bytes
        self.max_stdout_bytes = max_stdout_bytes
        self.max_stderr_bytes = max_stderr_bytes
        self.observer = observer

    @property
    def namespace_group(self) -> str:
        return self._namespace_group

    def make(self, context: TransportContext) -> LiveTransport:
        return ExecTransport(self, context)

    def standalone(self) -> ExecTransport:
        """A transport outside any run (worker-level allowlist only), e.g. for tools and tests."""
        return ExecTransport(self, None)
