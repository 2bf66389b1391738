"""``python -m tickets.service TITLE...``: open tickets, each row with its event."""

from __future__ import annotations

import asyncio
import sys

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.db import create_engine, session_factory
from relaybus.outbox import Outbox
from relaybus.settings import Settings


async def open_ticket(session: AsyncSession, outbox: Outbox, title: str) -> int:
    """Insert the ticket and its event in the caller's transaction; the ticket's id."""
    ticket_id: int = (
        await session.execute(
            text("INSERT INTO tickets (title) VALUES (:title) RETURNING id"), {"title": title}
        )
    ).scalar_one()
    await outbox.enqueue(
        session,
        aggregate_type="ticket",
        aggregate_id=str(ticket_id),
        type="ticket.opened",
        payload={"id": ticket_id, "title": title},
    )
    return ticket_id


async def main(titles: list[str]) -> None:
    settings = Settings()
    engine = create_engine(settings.database_url)
    outbox = Outbox(partitions=settings.outbox_partitions)
    try:
        for title in titles:
            async with session_factory(engine)() as session, session.begin():
                print(await open_ticket(session, outbox, title))
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
