"""Helpers for tests that start child processes (the ``bg`` fixture itself lives in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

Bg = Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]


def assert_gone(pid: int) -> None:
    """The child was reaped: it is not our child any more and not a zombie."""
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    status = Path(f"/proc/{pid}/status")
    with contextlib.suppress(FileNotFoundError):  # only if the pid was reused meanwhile
        assert "zombie" not in status.read_text().lower()
