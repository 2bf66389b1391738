"""Fixtures shared by every test layer: settings, repository paths."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.db import create_engine
from relaybus.settings import Settings
from tests.support.consumerdata import prepare_effects

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Client settings: the stack's endpoints unless RELAYBUS_* says otherwise."""
    return Settings()


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine on the stack's database, disposed after the test."""
    engine = create_engine(settings.database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def effects_table(engine: AsyncEngine) -> None:
    """The ``consumer_effects`` table the test consumers write to."""
    await prepare_effects(engine)
