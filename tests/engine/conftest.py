"""Shared fixtures of the engine tests: a fresh store of each backend (kept small on purpose)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.stores.fs import FsStore
from engine.stores.memory import MemoryStore


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
