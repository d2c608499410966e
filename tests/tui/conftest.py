"""Shared fixtures for the TUI tests: the fixture store and the frozen clock."""

from __future__ import annotations

import pytest

from engine.stores import MemoryStore
from engine.testing import FakeClock
from tests.tui.fixtures import FixtureStore, build_fixture_store, fixture_clock


@pytest.fixture
def clock() -> FakeClock:
    return fixture_clock()


@pytest.fixture
async def fixture_store() -> FixtureStore:
    return await build_fixture_store(MemoryStore())
