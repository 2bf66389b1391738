"""Every test here faults the shared services (stops, freezes, restarts them, or kills
relaybus processes under load): marked ``destructive``, run in their own phase."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.destructive)
