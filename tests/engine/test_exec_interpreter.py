"""Exec allowlist: a script's interpreter must be allowed too; relative program paths are refused (issue 13 item 9).

A program inside the allowed prefix whose ``#!`` names an interpreter outside it would run that interpreter;
``#!/usr/bin/env NAME`` runs what the child's ``PATH`` finds for NAME. A relative ``program_path`` would resolve
against the worker's current directory. All of these are ``exec_program_not_allowed`` and nothing is spawned.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from engine.errors import IoError, IoErrorKind
from engine.exec_transport import MAX_INTERPRETER_DEPTH, ExecTransportFactory, read_shebang
from engine.process_exec import ProcessEvent

SH = os.path.realpath("/bin/sh")  # /usr/bin/dash on Debian: an allowlist may name a single file
ENV = os.path.realpath("/usr/bin/env")
pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/env"), reason="needs /usr/bin/env")


@pytest.fixture
def d(tmp_path: Path) -> Path:
    path = Path(os.path.realpath(tmp_path)) / "allowed"
    path.mkdir()
    return path


def write(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def req(program: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "run_program_v1", "program_path": program, "timeout_ms": 10_000, **fields}


async def call(allow: list[str], request: dict[str, Any]) -> tuple[Any, list[ProcessEvent]]:
    events: list[ProcessEvent] = []
    transport = ExecTransportFactory(allow, observer=events.append).standalone()
    try:
        return await transport.call("exec", request), events
    except IoError as err:
        return err, events


async def refused(allow: list[str], request: dict[str, Any]) -> IoError:
    err, events = await call(allow, request)
    assert isinstance(err, IoError), f"expected a refusal, got {err!r}"
    assert (err.kind, err.code) == (IoErrorKind.OTHER, "exec_program_not_allowed"), err
    assert events == [], "a refused program is never spawned"
    return err


async def test_interpreter_outside_the_prefix_is_refused(d: Path) -> None:
    program = write(d / "tool.sh", "#!/bin/sh\nprintf '{\"ok\":1}'\n")
    err = await refused([f"{d}/"], req(program))
    assert err.info.details == {"program_path": program, "canonical_path": program, "interpreter": SH}
    assert "interpreter" in str(err)
    # Allowing the interpreter (here as a single file) admits the script.
    assert (await call([f"{d}/", SH], req(program)))[0] == {"ok": 1}


async def test_interpreter_with_an_argument_and_blanks(d: Path) -> None:
    program = write(d / "tool.sh", "#! \t/bin/sh -e \t\nprintf '{\"ok\":2}'\n")
    assert read_shebang(program) == ("/bin/sh", "-e")
    await refused([f"{d}/"], req(program))
    assert (await call([f"{d}/", SH], req(program)))[0] == {"ok": 2}


async def test_relative_interpreter_is_refused(d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(d)
    write(d / "interp", "#!/bin/sh\nprintf '{}'\n")
    program = write(d / "tool.sh", "#!interp\n")
    await refused([f"{d}/", SH], req(program))


async def test_nested_interpreters_are_all_checked(d: Path) -> None:
    inner = write(d / "inner", "#!/bin/sh\nshift 0; printf '{\"nested\":1}'\n")
    program = write(d / "outer", f"#!{inner}\n")
    err = await refused([f"{d}/"], req(program))
    assert err.info.details is not None and err.info.details["interpreter"] == SH
    assert (await call([f"{d}/", SH], req(program)))[0] == {"nested": 1}


async def test_interpreter_chains_deeper_than_the_kernel_follows_are_refused(d: Path) -> None:
    previous = "/bin/sh"
    for level in range(MAX_INTERPRETER_DEPTH + 1):
        previous = write(d / f"level{level}", f"#!{previous}\n")
    err = await refused([f"{d}/", SH], req(previous))
    assert "nests more than" in str(err)


async def test_missing_interpreter(d: Path, tmp_path: Path) -> None:
    # Inside the prefix: nothing outside can run, the spawn fails as before.
    inside = write(d / "a.sh", f"#!{d}/no-such-interpreter\n")
    err, _ = await call([f"{d}/"], req(inside))
    assert isinstance(err, IoError) and err.code == "exec_spawn_failed"
    # Outside the prefix: refused (it might appear between the check and the exec).
    outside = write(d / "b.sh", f"#!{tmp_path}/later/interpreter\n")
    await refused([f"{d}/"], req(outside))


async def test_env_looks_the_name_up_on_the_childs_path(d: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    evil.mkdir()
    write(evil / "mytool", "#!/bin/sh\nprintf '{\"evil\":1}'\n")
    write(d / "mytool", "#!/bin/sh\nprintf '{\"good\":1}'\n")
    program = write(d / "run", "#!/usr/bin/env mytool\n")
    allow = [f"{d}/", ENV, SH]
    # The request's env puts a folder outside the prefix first on PATH: refused, naming what env would run.
    err = await refused(allow, req(program, env={"PATH": f"{evil}:{d}"}))
    assert err.info.details is not None and err.info.details["interpreter"] == str(evil / "mytool")
    assert (await call(allow, req(program, env={"PATH": f"{d}:{evil}"})))[0] == {"good": 1}
    # env itself must be allowed, and so must the found program's own interpreter.
    await refused([f"{d}/", SH], req(program, env={"PATH": str(d)}))
    await refused([f"{d}/", ENV], req(program, env={"PATH": str(d)}))


async def test_env_split_string_assignments_and_options(d: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    evil.mkdir()
    write(evil / "mytool", "#!/bin/sh\nprintf '{\"evil\":1}'\n")
    write(d / "mytool", "#!/bin/sh\nprintf '{\"good\":1}'\n")
    allow = [f"{d}/", ENV, SH]
    split = write(d / "split", f"#!/usr/bin/env -S PATH={evil} mytool\n")
    await refused(allow, req(split, env={"PATH": str(d)}))
    good = write(d / "good", f"#!/usr/bin/env -S PATH={d} mytool\n")
    assert (await call(allow, req(good, env={"PATH": str(evil)})))[0] == {"good": 1}
    for line in ("-i mytool", "-S -i mytool", "-S mytool${X}", "--ignore-environment mytool"):
        await refused(allow, req(write(d / "opt", f"#!/usr/bin/env {line}\n"), env={"PATH": str(d)}))


async def test_env_search_through_the_current_directory_is_refused(d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(d)
    write(d / "mytool", "#!/bin/sh\nprintf '{}'\n")
    program = write(d / "run", "#!/usr/bin/env mytool\n")
    for path in (":/usr/bin", ".:/usr/bin", "bin:/usr/bin"):
        await refused([f"{d}/", ENV, SH], req(program, env={"PATH": path}))


async def test_env_runs_a_plain_text_file_with_the_shell(d: Path) -> None:
    """execvp runs a file that is neither ``#!`` nor ELF with /bin/sh, so the shell must be allowed."""
    write(d / "plain", "printf '{\"plain\":1}'\n")
    program = write(d / "run", "#!/usr/bin/env plain\n")
    await refused([f"{d}/", ENV], req(program, env={"PATH": str(d)}))
    assert (await call([f"{d}/", ENV, SH], req(program, env={"PATH": str(d)})))[0] == {"plain": 1}


async def test_relative_program_path_is_refused_not_resolved_against_the_cwd(
    d: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(d / "tool", "#!/bin/sh\nprintf '{\"ran\":1}'\n")
    monkeypatch.chdir(d)
    for relative in ("tool", "./tool", f"../{d.name}/tool", ""):
        err = await refused([f"{d}/", SH], req(relative))
        assert err.info.details == {"program_path": relative, "reason": "relative_path"}
        assert "absolute" in str(err)
    assert (await call([f"{d}/", SH], req(str(d / "tool"))))[0] == {"ran": 1}  # the positive control
