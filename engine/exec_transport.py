"""The exec transport: run an allowlisted local program (namespace group ``exec``, ENGINE-SPEC §15, §0.8).

Request (a JSON object)::

    {"kind": "run_program_v1", "program_path": "/nix/store/…/bin/app",
     "argv": ["--flag"], "stdin_json": {...}, "timeout_ms": 300000, "env": {"K": "V"}}

The program's stdout, parsed as JSON, is the response. The program path must be absolute (a
relative one would resolve against the worker's current directory); it is resolved (exists →
executable → canonical path) and must lie, by whole path components, under one of the effective
allow prefixes: the run's ``RunConfig.exec_allowlist`` when set, else the factory's (worker-level)
list, else ``("/nix/store/",)``. A prefix may name a single file (``/usr/bin/dash``).

A script's interpreter runs too, so it must be allowed as well (issue 13): when the program starts
with ``#!``, its interpreter line is read as the kernel reads it (the first 256 bytes; the
interpreter up to the first blank, the rest as one argument), the interpreter must be an absolute
path and its canonical path must be allowed, recursively (an interpreter may itself be a script;
at most four levels, as the kernel). ``/usr/bin/env NAME`` (any ``env`` whose canonical name is
``env``) runs what ``execvp`` finds for ``NAME`` along the child's ``PATH`` (the inherited
environment plus the request's ``env``; unset: ``/bin:/usr/bin``), so that program must be allowed
too; ``env -S`` is followed through ``NAME=VALUE`` assignments (``PATH=`` included); any other
``env`` option, a quote, a backslash, a ``$`` or a relative ``PATH`` entry reached in the search is
refused because the lookup could not be checked. Refusals are ``exec_program_not_allowed``.

What this does not check, and why: the dynamic loader an ELF program names (``PT_INTERP``, usually
``/lib64/ld-linux-*.so.2`` outside any prefix, so checking it would refuse every system binary)
and ``binfmt_misc`` handlers (system configuration, not chosen by the file). The checks read the
files at call time: a prefix that someone else can write to can change them before the exec, which
is why the default prefix is the immutable ``/nix/store/``.

Error details never carry stdout, stderr, argv, env or stdin.
Cancelling the calling task kills the child's process group (SIGTERM, SIGKILL after the grace
period), reaps it and re-raises ``asyncio.CancelledError``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import JsonValue

from engine._wire import compact_json, parse_json, sorted_json
from engine.errors import ErrorCategory, IoError
from engine.process_exec import (
    DEFAULT_GRACE_PERIOD_S,
    OutputTap,
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
    "MAX_INTERPRETER_DEPTH",
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
    "read_shebang",
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


def _not_allowed(message: str, details: dict[str, JsonValue]) -> IoError:
    return IoError.other("exec_program_not_allowed", message, details=details)


def _allowed(path: str, allowlist: Sequence[str]) -> bool:
    return any(path_is_under(path, prefix) for prefix in allowlist)


def _resolve_program(program_path: str, allowlist: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """Absolute → exists → executable (``access()`` on the requested path) → canonical → allowlisted,
    then its interpreters (see the module docstring). ``env`` is the child's environment."""
    details: dict[str, JsonValue] = {"program_path": program_path}
    if not os.path.isabs(program_path):
        raise _not_allowed(
            f"exec program path must be absolute (it would resolve against the current directory): {program_path}",
            {"program_path": program_path, "reason": "relative_path"},
        )
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
    if not _allowed(canonical, allowlist):
        raise _not_allowed(
            f"exec program {canonical} is not under an allowed prefix ({', '.join(allowlist) or 'none'})",
            {"program_path": program_path, "canonical_path": canonical},
        )
    _check_interpreters(canonical, allowlist, os.environ if env is None else env, program_path)
    return canonical


MAX_INTERPRETER_DEPTH = 4
"""Nested interpreters the kernel follows (``BINPRM_MAX_RECURSION``); deeper chains are refused."""
_SHEBANG_BYTES = 256  # BINPRM_BUF_SIZE: the kernel reads no more of the interpreter line
_DEFAULT_EXEC_PATH = "/bin:/usr/bin"  # what execvp searches when PATH is unset (glibc, musl)


def read_shebang(path: str) -> tuple[str, str | None] | None:
    """``(interpreter, argument)`` of a ``#!`` file as the kernel parses it, or None for other files.

    Raises ``OSError`` when the file can't be read.
    """
    with open(path, "rb") as f:
        head = f.read(_SHEBANG_BYTES)
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].strip(b" \t")
    if not line:
        return None  # the kernel refuses it (ENOEXEC): nothing runs
    end = next((i for i, byte in enumerate(line) if byte in b" \t"), len(line))
    interpreter, argument = line[:end], line[end:].strip(b" \t")
    return os.fsdecode(interpreter), (os.fsdecode(argument) if argument else None)


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _check_interpreters(canonical: str, allowlist: Sequence[str], env: Mapping[str, str], requested: str) -> None:
    """Every program that runs because ``canonical`` is a script must be allowed too."""
    seen = canonical
    via_execvp = False  # found by `env` (execvp runs a file that is neither `#!` nor ELF with /bin/sh)
    for _ in range(MAX_INTERPRETER_DEPTH + 1):
        try:
            shebang = read_shebang(seen)
        except OSError:
            raise _not_allowed(
                f"exec program {seen} could not be read to check its interpreter",
                {"program_path": requested, "canonical_path": canonical},
            ) from None
        if shebang is None:
            if not via_execvp or _is_elf(seen):
                return
            shebang = ("/bin/sh", None)
        interpreter, argument = shebang
        resolved = _allowed_file(interpreter, allowlist, requested, canonical)
        if resolved is None:
            return  # missing: the spawn fails (exec_spawn_failed), nothing runs
        via_execvp = False
        # A multi-call binary (busybox) acts as the name it was run by: check the name and the file.
        if "env" in (os.path.basename(interpreter), os.path.basename(resolved)) and argument is not None:
            target = _env_target(argument, allowlist, env, requested, canonical)
            if target is None:
                return
            resolved, via_execvp = target, True
        seen = resolved
    raise _not_allowed(
        f"exec program {canonical} nests more than {MAX_INTERPRETER_DEPTH} interpreters",
        {"program_path": requested, "canonical_path": canonical},
    )


def _allowed_file(path: str, allowlist: Sequence[str], requested: str, canonical: str) -> str | None:
    """The canonical path of interpreter ``path`` if it is allowed; None if it does not exist but its
    path is allowed (the exec will fail); else ``exec_program_not_allowed``."""
    details: dict[str, JsonValue] = {"program_path": requested, "canonical_path": canonical, "interpreter": path}
    if not os.path.isabs(path):
        raise _not_allowed(f"exec program {canonical} names a relative interpreter {path}", details)
    try:
        resolved = os.path.realpath(path, strict=True)
    except (OSError, ValueError):
        if _allowed(os.path.normpath(path), allowlist):
            return None
        raise _not_allowed(
            f"exec program {canonical} names interpreter {path}, which is not under an allowed prefix", details
        ) from None
    if not _allowed(resolved, allowlist):
        details["interpreter"] = resolved
        raise _not_allowed(
            f"exec program {canonical} runs interpreter {resolved}, which is not under an allowed prefix "
            f"({', '.join(allowlist) or 'none'})",
            details,
        )
    return resolved


def _env_target(
    argument: str, allowlist: Sequence[str], env: Mapping[str, str], requested: str, canonical: str
) -> str | None:
    """What ``#!/usr/bin/env ARGUMENT`` runs, checked; None when that is the script itself."""
    details: dict[str, JsonValue] = {"program_path": requested, "canonical_path": canonical}

    def unverifiable(why: str) -> IoError:
        return _not_allowed(f"exec program {canonical} runs `env` in a way that can't be checked ({why})", details)

    if argument.startswith("-"):
        if argument.startswith("--split-string="):
            words = argument[len("--split-string=") :].split()
        elif argument.startswith("-S"):
            words = argument[2:].split()
        else:
            raise unverifiable("an `env` option other than -S")
    else:
        words = [argument]  # without -S the kernel passes the rest of the line as one name
    if any(c in argument for c in "'\"\\$"):
        raise unverifiable("quotes, backslashes or variables")
    search_path = env.get("PATH", _DEFAULT_EXEC_PATH)
    command = None
    for word in words:
        name, eq, value = word.partition("=")
        if eq and "/" not in name:
            if name == "PATH":
                search_path = value
            continue
        if word.startswith("-"):
            raise unverifiable("an `env` option other than -S")
        command = word
        break
    if command is None:
        return None  # `env` runs the script path the kernel appends: the script itself
    if "/" in command:
        return _allowed_file(command, allowlist, requested, canonical) or None
    for entry in search_path.split(":"):
        if not os.path.isabs(entry):  # "" and relative entries are the current directory
            raise unverifiable(f"PATH entry {entry or '(empty)'!r} before {command!r} is found")
        candidate = os.path.join(entry, command)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return _allowed_file(candidate, allowlist, requested, canonical)
    return None  # not found: env fails, nothing else runs


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
        env = dict(os.environ)
        env.update(req.env)
        program = _resolve_program(req.program_path, self.allowlist, env)
        if len(req.stdin) > f.max_stdin_bytes:
            raise _transport_error(
                "exec_stdin_too_large",
                f"stdin for exec program {program} is {len(req.stdin)} bytes (max {f.max_stdin_bytes})",
                {"program_path": program, "max_stdin_bytes": f.max_stdin_bytes, "stdin_bytes": len(req.stdin)},
            )
        tap = f.output_tap(self._context) if f.output_tap is not None and self._context is not None else None
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
                tap=tap,
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
        output_tap: Callable[[TransportContext], OutputTap | None] | None = None,
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
        self.output_tap = output_tap
        """Per attempt: where the program's output goes as it is read (a worker's exec log), or nothing."""

    @property
    def namespace_group(self) -> str:
        return self._namespace_group

    def make(self, context: TransportContext) -> LiveTransport:
        return ExecTransport(self, context)

    def standalone(self) -> ExecTransport:
        """A transport outside any run (worker-level allowlist only), e.g. for tools and tests."""
        return ExecTransport(self, None)
