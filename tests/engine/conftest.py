"""Shared fixtures of the engine tests: a fresh store of each backend (kept small on purpose)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.stores.fs import FsStore
from engine.stores.memory import MemoryStore
from tests.engine.process_helpers import Bg


@pytest.fixture
def memory_store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def fs_store(tmp_path: Path) -> Iterator[FsStore]:
    """A filesystem store in a fresh temp folder (``tmp_path / "store"``), closed afterwards."""
    store = FsStore(tmp_path / "store")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
async def bg() -> AsyncIterator[Bg]:
    """Start background tasks; any still running at teardown are cancelled and awaited (children reaped)."""
    tasks: list[asyncio.Task[Any]] = []

    def start(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
