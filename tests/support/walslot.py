"""Replication slots for WAL relay tests: one per test, dropped afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.ids import uuid7
from tests.support.poll import eventually


async def slot_state(engine: AsyncEngine, slot: str) -> tuple[bool, int] | None:
    """(active, confirmed_flush_lsn as an integer) of ``slot``, or None if absent."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT active, confirmed_flush_lsn - '0/0'::pg_lsn AS lsn "
                    "FROM pg_replication_slots WHERE slot_name = :s"
                ),
                {"s": slot},
            )
        ).first()
    return None if row is None else (bool(row.active), int(row.lsn or 0))


async def wait_active(engine: AsyncEngine, slot: str, within: float = 60) -> None:
    """Until a consumer streams ``slot`` (so rows committed from now on reach it)."""

    async def active() -> bool:
        state = await slot_state(engine, slot)
        return state is not None and state[0]

    await eventually(active, within=within, what=f"slot {slot} streamed")


@asynccontextmanager
async def scratch_slot(engine: AsyncEngine) -> AsyncIterator[str]:
    """A fresh slot name; the slot (if a relay created it) is dropped on exit, once
    no consumer holds it, so no test leaves WAL retained."""
    slot = f"t_{uuid7().hex[-16:]}"
    try:
        yield slot
    finally:

        async def dropped() -> bool:
            state = await slot_state(engine, slot)
            if state is None:
                return True
            if state[0]:
                return False
            async with engine.begin() as conn:
                await conn.execute(text("SELECT pg_drop_replication_slot(:s)"), {"s": slot})
            return True

        await eventually(dropped, within=30, what=f"slot {slot} dropped")
