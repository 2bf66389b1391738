"""The fault matrix, shortened for CI (1 500 messages, two faults each: every fault
kind of a scenario that alternates, e.g. S7's crash and freeze, S10's join and leave): every run's
history must pass the checker (nothing lost, no effect twice, per-key order at
publication and application, the outbox empty, no unexpected dead letters). The full
sizes run with ``make chaos`` (tests/chaos/matrix.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.settings import Settings
from tests.chaos.scenarios import FAULTS, run


@pytest.mark.parametrize("scenario", sorted(FAULTS))
async def test_short_scenario_keeps_every_promise(
    scenario: str, settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    result = await run(
        scenario,
        settings,
        engine,
        tmp_path,
        FAULTS[scenario],
        messages=1500,
        faults=2,
        fault_every=4.0,
    )
    print(scenario, json.dumps(result.figures))
    assert result.report.ok, result.report
