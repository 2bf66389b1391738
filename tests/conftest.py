"""Fixtures shared by every test layer: settings, repository paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaybus.settings import Settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Client settings: the stack's endpoints unless RELAYBUS_* says otherwise."""
    return Settings()


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
