"""The filesystem store: the shared contract suite, plus what only a filesystem backend must prove."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.stores.fs import FsStore
from tests.engine.store_contract import StoreContract


class TestFsStoreContract(StoreContract):
    async def make_store(self, request: pytest.FixtureRequest) -> FsStore:
        root: Path = request.getfixturevalue("tmp_path") / "store"
        return FsStore(root)

    async def reopen_store(self, store: FsStore, request: pytest.FixtureRequest) -> FsStore:
        return FsStore(store.root)
