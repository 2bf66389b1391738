"""Fixtures shared by every test layer: settings, repository paths."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.db import create_engine
from relaybus.settings import Settings
from relaybus.shop.settings import ShopSettings
from relaybus.shop.topology import ensure_shop_topics
from tests.support.consumerdata import prepare_effects

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Client settings: the stack's endpoints unless RELAYBUS_* says otherwise."""
    return Settings()


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shop_topics(settings: Settings) -> None:
    """The shop's topics with their partition count, before any test's relay runs:
    a relay that publishes a shop event first would auto-create its topic with the
    broker's default of one partition (as ``relaybus run`` and the demo also do)."""
    asyncio.run(ensure_shop_topics(settings.kafka_bootstrap, ShopSettings()))


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
