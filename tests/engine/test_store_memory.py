"""The in-memory store passes the shared store contract suite, its unit of work included."""

from __future__ import annotations

from typing import Any, NoReturn

import pytest

from engine.errors import StorageError
from engine.stores.memory import MemoryStore
from tests.engine.store_contract import StoreContract, UnitOfWorkContract


class TestMemoryStore(UnitOfWorkContract, StoreContract):
    async def make_store(self, request: pytest.FixtureRequest) -> MemoryStore:
        return MemoryStore()

    async def fail_between_blobs_and_events(self, store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        def fail(*args: Any) -> NoReturn:  # after put_many, before the stream grows
            raise StorageError.other("injected", "injected between the blobs and the events")

        monkeypatch.setattr(store.events, "_land", fail)
