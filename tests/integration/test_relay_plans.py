"""The polling relay's connections plan its statements once (``RELAY_SESSION_SETTINGS``):
PostgreSQL's default would plan the fetch again on every call, which cost more server
CPU than running it."""

from __future__ import annotations

from sqlalchemy import text

from relaybus.db import create_engine
from relaybus.outbox.store import RELAY_SESSION_SETTINGS, PostgresOutboxStore
from relaybus.settings import Settings


async def test_the_relay_fetch_runs_on_one_generic_plan(settings: Settings) -> None:
    engine = create_engine(
        settings.database_url, pool_size=1, server_settings=RELAY_SESSION_SETTINGS
    )
    try:
        store = PostgresOutboxStore(engine)
        for _ in range(8):  # past the five custom plans the default mode tries first
            await store.fetch(32000, 70, 2**40)  # a partition no relay uses: no rows
        async with engine.connect() as conn:  # the pool's one connection
            plans = (
                await conn.execute(
                    text(
                        "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                        "WHERE statement LIKE '%running - size%' "
                        "AND statement NOT LIKE '%pg_prepared_statements%'"
                    )
                )
            ).one()
            mode = (await conn.execute(text("SHOW plan_cache_mode"))).scalar_one()
    finally:
        await engine.dispose()
    assert mode == "force_generic_plan"
    assert plans.custom_plans == 0
    assert plans.generic_plans == 8
