"""Admission's batched Redis script on the real Redis: all-or-nothing across a
request's buckets, decisions remembered per request (also within one batch), and
four processes deciding at once never admit more than the global bucket's budget,
with every request accounted for (admitted + refused = sent)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from relaybus.settings import Settings
from relaybus.shop.streams.admission.limits import Ask, Limit, RedisAdmission

REPO = Path(__file__).resolve().parents[2]
USER = Limit("per-user", 0.001, 3)
HUGE = Limit("global", 1e6, 10**6)


async def _cleanup(client: Redis, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(f"{prefix}:*")]
    if keys:
        await client.delete(*keys)


async def test_a_customer_gets_its_burst_and_a_refusal_takes_nothing(settings: Settings) -> None:
    client = Redis.from_url(settings.redis_url)
    prefix = f"test-admission-{uuid.uuid4().hex[:8]}"
    # Limits that refill in 1000+ s (nothing refills during the test) need a decision
    # TTL at least that long: a bucket is kept for its slice of the TTL.
    admission = RedisAdmission(client, 200_000, prefix=prefix)
    tight_global = Limit("global", 0.001, 2)
    try:

        def ask(n: int, glob: Limit = HUGE, gkey: str = "g1") -> Ask:
            return Ask(f"r{n}", ("user:ann", gkey), (USER, glob))

        # Five requests of one customer in one batch: three admitted, in order.
        first = await admission.decide([ask(n) for n in range(5)])
        assert first == [None, None, None, USER, USER]
        # The same requests again (a redelivery): the same answers, no token taken.
        assert await admission.decide([ask(n) for n in range(5)]) == first
        # A duplicate inside one batch gets one decision and takes one token.
        cy = ("user:cy",)
        ids = ["x", "x", "y", "z", "w"]
        again = await admission.decide([Ask(f"cy-{i}", cy, (USER,)) for i in ids])
        assert again == [None, None, None, None, USER]
        # All or nothing: bob's requests refused by the global bucket leave his own.
        bob = "user:bob"
        refused = await admission.decide(
            [Ask(f"b{n}", (bob, "g3"), (USER, tight_global)) for n in range(4)]
        )
        assert refused == [None, None, tight_global, tight_global]
        later = await admission.decide([Ask(f"c{n}", (bob, "g4"), (USER, HUGE)) for n in range(2)])
        assert later == [None, USER]  # one token left of three, not zero
    finally:
        await _cleanup(client, prefix)
        await client.aclose()


async def test_clients_with_skewed_clocks_share_buckets_and_decisions(
    settings: Settings,
) -> None:
    client = Redis.from_url(settings.redis_url)
    prefix = f"test-admission-{uuid.uuid4().hex[:8]}"
    ttl = 10_000
    # B's clock is 0.6 of a slice ahead of A's: often in the next slice, never two on.
    a = RedisAdmission(client, ttl, prefix=prefix)
    b = RedisAdmission(client, ttl, prefix=prefix, clock=lambda: time.time() + 0.6 * ttl)
    try:

        def ask(n: int) -> Ask:
            return Ask(f"r{n}", ("user:dee",), (USER,))

        assert await a.decide([ask(0), ask(1)]) == [None, None]
        # B sees the two tokens A took and A's decisions (a redelivery through B).
        assert await b.decide([ask(0), ask(2), ask(3)]) == [None, None, USER]
        assert await a.decide([ask(3), ask(4)]) == [USER, USER]
    finally:
        await _cleanup(client, prefix)
        await client.aclose()


async def test_a_limit_slower_to_refill_than_the_ttl_is_refused(settings: Settings) -> None:
    client = Redis.from_url(settings.redis_url)
    try:
        admission = RedisAdmission(client, 600, prefix=f"test-admission-{uuid.uuid4().hex[:8]}")
        with pytest.raises(ValueError, match="longer to refill than the decision TTL"):
            await admission.decide([Ask("r", ("user:eve",), (USER,))])  # 3 / 0.001 s
    finally:
        await client.aclose()


HAMMER = """
import asyncio, json, sys
import pytest
from redis.asyncio import Redis
from relaybus.shop.streams.admission.limits import Ask, Limit, RedisAdmission

async def main(url, prefix, who):
    client = Redis.from_url(url)
    admission = RedisAdmission(client, 200_000, prefix=prefix)
    budget = Limit("global", 0.001, 150)
    admitted = refused = 0
    for batch in range(20):
        asks = [Ask(f"{who}-{batch}-{n}", ("global",), (budget,)) for n in range(25)]
        for answer in await admission.decide(asks):
            if answer is None:
                admitted += 1
            else:
                refused += 1
    await client.aclose()
    print(json.dumps({"admitted": admitted, "refused": refused}))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"""


async def test_four_processes_share_the_budget_exactly(settings: Settings, tmp_path: Path) -> None:
    prefix = f"test-admission-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "hammer.py"
    script.write_text(HAMMER)
    client = Redis.from_url(settings.redis_url)
    try:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(script),
                settings.redis_url,
                prefix,
                f"p{n}",
                stdout=asyncio.subprocess.PIPE,
                cwd=REPO,
            )
            for n in range(4)
        ]
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)
        results = [json.loads(out) for out, _ in outputs]
    finally:
        await _cleanup(client, prefix)
        await client.aclose()
    # 4 x 500 requests against a bucket of 150 that refills once in 1000 s.
    assert sum(r["admitted"] for r in results) == 150
    assert sum(r["admitted"] + r["refused"] for r in results) == 4 * 500
