"""End-to-end helpers for tests/cli: run ``python -m mfm_tui`` in a subprocess against a temporary store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.events import EventEnvelope, decode_envelope


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


class Mfm:
    """``mfm --store STORE --ops engine.demo_ops …`` as a subprocess."""

    def __init__(self, store: Path, home: Path, cwd: Path | None = None) -> None:
        self.store = store
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if k not in ("MFM_STORE", "XDG_DATA_HOME")}
        self.env["HOME"] = str(home)
        self.env["PYTHONUNBUFFERED"] = "1"

    def argv(self, *args: str, ops: tuple[str, ...] = ("engine.demo_ops",), store: bool = True) -> list[str]:
        cmd = [sys.executable, "-m", "mfm_tui"]
        if store:
            cmd += ["--store", str(self.store)]
        for module in ops:
            cmd += ["--ops", module]
        return [*cmd, *args]

    def __call__(self, *args: str, timeout: float = 120, **kw: Any) -> Result:
        proc = subprocess.run(
            self.argv(*args, **kw),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args, **kw),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
            cwd=self.cwd,
        )

    def start(self, op: str, *params: str) -> str:
        res = self("start", op, *(x for p in params for x in ("-p", p)), "--json")
        assert res.code == 0, res.err
        run_id: str = res.json()["run_id"]
        return run_id

    def events(self, run_id: str) -> list[EventEnvelope]:
        res = self("events", run_id, "--json")
        assert res.code == 0, res.err
        return [decode_envelope(line) for line in res.out.splitlines() if line.strip()]

    def read_events(self, run_id: str) -> list[EventEnvelope]:
        """The run's events read in this process through the store API (cheap, for polling)."""
        from engine.ids import RunId
        from engine.stores.fs import FsStore

        async def go() -> list[EventEnvelope]:
            envs: list[EventEnvelope] = await FsStore(self.store).events.read_range(RunId(run_id), 1)
            return envs

        return asyncio.run(go())

    def lease(self, run_id: str) -> dict[str, Any]:
        path = self.store / "runs" / run_id / "lease"
        value: dict[str, Any] = json.loads(path.read_text())
        return value


def wait_until(predicate: Callable[[], bool], *, timeout: float = 180.0, what: str = "condition") -> None:
    """Poll ``predicate`` (a wait for an outside process, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def store_listing(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its size (to prove a command wrote nothing)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def live_pids_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:
            continue
        state = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("State:")), "?")
        if marker in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def as_nobody(args: list[str]) -> Result:
    """``mfm ARGS`` (``mfm_tui.cli.main``) in a forked child that dropped root for ``nobody``: its exit code and
    output (stdout and stderr together, in ``out``). The interpreter is already loaded: ``nobody`` may not be able to
    read its files (``/root``); whatever the command imports lazily is imported here first."""
    import concurrent.futures.thread  # noqa: F401 - asyncio.to_thread's executor (the store reads its runs index in a thread)

    import mfm_tui.app
    import mfm_tui.cli

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 99
        out = open(write_fd, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stdout = sys.stderr = out
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            mfm_tui.cli.main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 98
        finally:
            out.flush()
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        text = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return Result(os.waitstatus_to_exitcode(status), text, text)


def make_read_only(root: Path, *, owner: int | None = None) -> None:
    """Every folder of ``root`` r-x, every file r-- (owner only), optionally given to ``owner`` first."""
    for p in [root, *root.rglob("*")]:
        if owner is not None:
            os.chown(p, owner, owner, follow_symlinks=False)
        p.chmod(0o500 if p.is_dir() else 0o400)
