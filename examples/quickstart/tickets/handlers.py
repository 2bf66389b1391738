"""``relaybus worker tickets.handlers:app``: one notification per opened ticket."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.consumers import ConsumerApp, Incoming, RetryPolicy

app = ConsumerApp("tickets")


@app.kafka(
    "outbox.event.ticket",
    group="ticket-notifications",
    types={"ticket.opened"},
    retry=RetryPolicy(max_attempts=3),
)
async def notify(message: Incoming, session: AsyncSession) -> None:
    """Applied once per message id: the inbox row commits with this insert."""
    await session.execute(
        text("INSERT INTO ticket_notifications (ticket_id, title) VALUES (:id, :title)"),
        {"id": message.payload["id"], "title": message.payload["title"]},
    )
