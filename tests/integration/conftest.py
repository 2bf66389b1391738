"""Fixtures of the integration tests (the real stack)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _shop_topics_first(shop_topics: None) -> None:
    """Any integration test may run a relay: the shop's topics exist before it."""
