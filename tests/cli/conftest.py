"""Fixtures for the command-line tests (helpers live in cli_helpers.py)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import Mfm, live_pids_with


@pytest.fixture
def mfm(tmp_path: Path) -> Iterator[Mfm]:
    home = tmp_path / "home"
    home.mkdir()
    yield Mfm(tmp_path / "store", home)
    # never leave a worker behind
    for pid in live_pids_with(str(tmp_path / "store")):
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
