"""LateSends: a late send answers for itself when its message is published again."""

from __future__ import annotations

import asyncio
import uuid

from relaybus.brokers.stalls import FORGET_ANSWERED_AFTER, LateSends


async def test_unanswered_send_defers_and_stalls_its_destination() -> None:
    late = LateSends()
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    mid = uuid.uuid4()
    late.remember(mid, "orders[3]", future, sent_at=100.0)
    assert late.answer(mid) is False
    assert late.stalled_destinations() == {"orders[3]": (100.0, 1)}
    future.set_result("ack")
    assert late.stalled_destinations() == {}
    assert late.answer(mid) is True  # acknowledged meanwhile: published, not sent again
    assert late.answer(mid) is None
    assert len(late) == 0


async def test_failed_late_send_is_sent_again() -> None:
    late = LateSends()
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    mid = uuid.uuid4()
    late.remember(mid, "orders[1]", future, sent_at=1.0)
    future.set_exception(ConnectionError("gone"))
    assert late.answer(mid) is False  # send it again


async def test_oldest_send_and_count_per_destination() -> None:
    late = LateSends()
    loop = asyncio.get_running_loop()
    for sent_at in (30.0, 10.0, 20.0):
        late.remember(uuid.uuid4(), "p0", loop.create_future(), sent_at)
    late.remember(uuid.uuid4(), "p1", loop.create_future(), 5.0)
    assert late.stalled_destinations() == {"p0": (10.0, 3), "p1": (5.0, 1)}


async def test_answered_sends_nobody_asks_about_are_forgotten() -> None:
    late = LateSends()
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    late.remember(uuid.uuid4(), "p0", future, 0.0)
    future.set_result("ack")
    late.sweep(now=1000.0)
    assert len(late) == 1
    late.sweep(now=1000.0 + FORGET_ANSWERED_AFTER + 1)
    assert len(late) == 0
