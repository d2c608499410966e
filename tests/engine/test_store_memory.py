"""The in-memory store passes the shared store contract suite."""

from __future__ import annotations

import pytest

from engine.stores.memory import MemoryStore
from tests.engine.store_contract import StoreContract


class TestMemoryStore(StoreContract):
    async def make_store(self, request: pytest.FixtureRequest) -> MemoryStore:
        return MemoryStore()
