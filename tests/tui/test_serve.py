"""``mfm serve``: the command names this interpreter, and a real server answers on 127.0.0.1 with the app behind it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from mfm_tui.serve import ServeError, app_command, preflight


def test_app_command_uses_this_interpreter(tmp_path: Path) -> None:
    cmd = app_command(tmp_path / "store", ops=("my.ops",), read_only=True, theme="ascii")
    assert cmd.startswith(sys.executable + " -m mfm_tui --store ")
    assert str((tmp_path / "store").absolute()) in cmd
    assert cmd.endswith("--ops my.ops tui --read-only --theme ascii")


def test_preflight_reports_a_broken_interpreter(tmp_path: Path) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named textual' >&2\nexit 1\n")
    broken.chmod(0o700)
    with pytest.raises(ServeError) as info:
        preflight(str(broken))
    assert info.value.code == "serve_app_broken"
    assert "No module named textual" in info.value.message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_mfm_serve_answers_and_runs_the_app(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfm_tui", "--store", str(tmp_path / "store"), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        async with aiohttp.ClientSession() as session:
            status = None
            for _ in range(300):  # the server takes a moment to bind (bounded: fails instead of hanging)
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{port}/") as resp:
                        status = resp.status
                        break
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                await asyncio.sleep(0.1)
            assert status == 200
            # The page alone proves little: open a session and see the app itself draw (its title "mfm").
            seen = b""
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws?width=80&height=24") as ws:
                for _ in range(400):
                    try:
                        msg = await ws.receive(timeout=30)
                    except TimeoutError:
                        break
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        seen += msg.data
                    elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break
                    if b"No runs yet" in seen:
                        break
            assert b"No runs yet" in seen, seen[-500:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_database_url_never_goes_on_the_session_command_line() -> None:
    """``ps`` shows argv to every user: a URL that may carry a password travels in $MFM_STORE instead."""
    from mfm_tui.serve import app_command

    command = app_command("postgresql://mfm:s3cr3t-pw@db.example/mfm", read_only=True)
    assert "s3cr3t-pw" not in command and "postgresql" not in command
    assert command.endswith("-m mfm_tui tui --read-only")
    assert "--store /srv/store" in app_command("/srv/store")
