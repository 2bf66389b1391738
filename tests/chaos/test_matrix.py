"""The fault matrix, shortened for CI (~2 k messages, three faults each): every run's
history must pass the checker (nothing lost, no effect twice, per-key order at
publication and application, the outbox empty, no unexpected dead letters). The full
sizes run with ``make chaos`` (tests/chaos/matrix.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.settings import Settings
from tests.chaos.scenarios import (
    Fault,
    churn_workers,
    crash_postgres,
    duplicate_ids,
    inject_poison,
    kill_relay,
    kill_worker,
    restart_kafka,
    run,
)

SHORT: dict[str, Fault] = {
    "S1": kill_relay,
    "S2": kill_worker,
    "S3": duplicate_ids,
    "S4": restart_kafka,
    "S7": crash_postgres,
    "S8": inject_poison,
    "S10": churn_workers,
}


@pytest.mark.parametrize("scenario", sorted(SHORT))
async def test_short_scenario_keeps_every_promise(
    scenario: str, settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    result = await run(
        scenario,
        settings,
        engine,
        tmp_path,
        SHORT[scenario],
        messages=2000,
        faults=3,
        fault_every=5.0,
    )
    print(scenario, json.dumps(result.figures))
    assert result.report.ok, result.report
