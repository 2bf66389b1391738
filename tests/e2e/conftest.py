"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.shop import ShopStarter


@pytest.fixture(scope="session", autouse=True)
def _shop_topics_first(shop_topics: None) -> None:
    """The shop's topics exist before any test's relay runs."""


@pytest.fixture
def start_shop(tmp_path: Path) -> Iterator[ShopStarter]:
    """``start_shop(settings, names)`` starts shop processes; all stop after the test."""
    starter = ShopStarter(tmp_path)
    try:
        yield starter
    finally:
        starter.stop_all()
