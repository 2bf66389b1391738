"""Stream processors against the libraries that do the same, in one run.

- ring lookups/s: ``relaybus.streams.sharding.HashRing`` (multi-probe and classic) vs ``uhashring``
- in-process limiter decisions/s: ``TokenBucket`` vs ``aiolimiter.AsyncLimiter``
- Redis token bucket: our Lua script (one EVALSHA per decision, one client, and
  admission's pipelined batches) vs ``redis-benchmark`` running a trivial EVALSHA
  the same way; ops/s and p99
- LRU: ``relaybus.streams.cache.LRUCache`` vs ``cachetools.LRUCache`` on a Zipf trace
- admission processor and inventory router (relaybus's stream runtime) vs a raw
  aiokafka consume→produce loop over the same records (at-least-once, same batch
  commits); target ≥ 0.5x for admission
- hit ratio of FIFO / LRU / LFU vs Belady's OPT: Zipf(1.0), 1 M requests over 100 k
  keys, three cache sizes

Rounds of each pair are interleaved; medians are reported. Uses the running stack
(``relaybus stack up``) and only its own topics and Redis keys (``bench.*``).

    .venv/bin/python -m bench.streams_bench [--rounds 3] [--records 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import random
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import cachetools
import uhashring
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiolimiter import AsyncLimiter
from redis.asyncio import Redis

from bench.report import Comparison, Series, amend, write
from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.consumers.incoming import Incoming
from relaybus.db import create_engine, session_factory
from relaybus.settings import Settings
from relaybus.shop.contract import EventType, step_id
from relaybus.shop.settings import ShopSettings
from relaybus.shop.streams.admission.limits import RedisAdmission
from relaybus.shop.streams.admission.processor import AdmissionProcessor
from relaybus.shop.streams.sharding.directory import ShardEpoch
from relaybus.shop.streams.sharding.router import InventoryRouter
from relaybus.streams.cache import FIFOCache, LFUCache, LRUCache
from relaybus.streams.envelope import envelope
from relaybus.streams.ratelimit import TokenBucket
from relaybus.streams.ratelimit.redis_bucket import RedisTokenBucket
from relaybus.streams.runtime.kafka_loop import KafkaStreamRunner, fewer_collections
from relaybus.streams.runtime.processor import Emit
from relaybus.streams.sharding import HashRing

SHARDS = [str(n) for n in range(10)]
PARTITIONS = 4


def timed(ops: int, fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return ops / (time.perf_counter() - started)


# -- ring ---------------------------------------------------------------------------
def ring_rounds(rounds: int, keys: int) -> list[Comparison]:
    names = [f"product-{n}" for n in range(keys)]
    ours = HashRing(SHARDS, vnodes=160)
    classic = HashRing(SHARDS, vnodes=160, probes=1)
    theirs = uhashring.HashRing(nodes=SHARDS, vnodes=160)
    a = Series("HashRing, 160 vnodes, 4 probes", "lookups/s")
    b = Series("HashRing, 160 vnodes, classic", "lookups/s")
    c = Series("uhashring (ketama, 160 vnodes)", "lookups/s")
    for _ in range(rounds):
        a.values.append(timed(keys, lambda: [ours.node_for(k) for k in names]))
        b.values.append(timed(keys, lambda: [classic.node_for(k) for k in names]))
        c.values.append(timed(keys, lambda: [theirs.get_node(k) for k in names]))
    return [
        Comparison("ring lookups: multi-probe / uhashring", a, c, None),
        Comparison("ring lookups: classic / uhashring", b, c, None),
    ]


def ring_balance(keys: int) -> dict[str, float]:
    names = [f"product-{n}" for n in range(keys)]
    out = {}
    for label, lookup in (
        ("relaybus 4 probes", HashRing(SHARDS, vnodes=160).node_for),
        ("relaybus classic", HashRing(SHARDS, vnodes=160, probes=1).node_for),
        ("uhashring", uhashring.HashRing(nodes=SHARDS, vnodes=160).get_node),
    ):
        load = Counter(lookup(k) for k in names)
        out[label] = round(max(load.values()) / (keys / len(SHARDS)), 3)
    return out


# -- in-process limiter --------------------------------------------------------------
async def limiter_rounds(rounds: int, ops: int) -> Comparison:
    ours = Series("TokenBucket.try_acquire", "decisions/s")
    theirs = Series("aiolimiter AsyncLimiter.acquire", "decisions/s")
    for _ in range(rounds):
        bucket = TokenBucket(rate=1e12, burst=10**9)
        started = time.perf_counter()
        for _ in range(ops):
            bucket.try_acquire(time.monotonic())
        ours.values.append(ops / (time.perf_counter() - started))
        limiter = AsyncLimiter(10**9, 1)
        started = time.perf_counter()
        for _ in range(ops):
            await limiter.acquire()
        theirs.values.append(ops / (time.perf_counter() - started))
    return Comparison("in-process limiter: token bucket / aiolimiter", ours, theirs, None)


# -- Redis ----------------------------------------------------------------------------
def redis_benchmark(url: str, ops: int, pipeline: int) -> tuple[float, float]:
    """``redis-benchmark`` running ``EVALSHA <return 1> 0`` on one connection:
    (requests/s, p99 ms)."""
    host, port = re.match(r"redis://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
    sha = subprocess.run(
        ["redis-cli", "-h", host, "-p", port, "SCRIPT", "LOAD", "return 1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    argv = ["redis-benchmark", "-h", host, "-p", port, "-c", "1", "-n", str(ops)]
    out = subprocess.run(
        [*argv, "-P", str(pipeline), "EVALSHA", sha, "0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"([\d.]+) requests per second", out).group(1))  # type: ignore[union-attr]
    # The latency summary's header is "avg min p50 p95 p99 max" (msec).
    summary = out.split("latency summary (msec):")[-1].split("\n")
    values = [float(v) for v in summary[2].split()] if len(summary) > 2 else [0.0] * 6
    return rps, values[4]


async def redis_rounds(
    rounds: int, ops: int, url: str
) -> tuple[list[Comparison], dict[str, float]]:
    client = Redis.from_url(url)
    run = uuid.uuid4().hex[:8]
    ours = Series("Lua token bucket, 1 client, 1 EVALSHA per decision", "ops/s")
    trivial = Series("redis-benchmark EVALSHA 'return 1', -c 1", "ops/s")
    batched = Series("admission: 3 buckets per decision, pipelines of 100", "decisions/s")
    trivial_p = Series("redis-benchmark EVALSHA 'return 1', -c 1 -P 100", "ops/s")
    p99: dict[str, float] = {}
    shop = ShopSettings()
    try:
        for n in range(rounds):
            bucket = RedisTokenBucket(client, f"bench:{run}:bucket", rate=1e9, burst=10**9)
            latencies = []
            started = time.perf_counter()
            for _ in range(ops):
                t = time.perf_counter()
                await bucket.try_acquire()
                latencies.append(time.perf_counter() - t)
            ours.values.append(ops / (time.perf_counter() - started))
            latencies.sort()
            p99["lua bucket p99 ms"] = round(latencies[int(0.99 * ops)] * 1000, 3)
            rps, bench_p99 = redis_benchmark(url, ops, 1)
            trivial.values.append(rps)
            p99["redis-benchmark p99 ms"] = bench_p99
            limiter = RedisAdmission(client, 600, prefix=f"bench:{run}:{n}")
            processor = AdmissionProcessor(limiter, shop)
            asks = [processor.buckets_for(f"c{i % 500}", "127.0.0.1", str(i)) for i in range(ops)]
            started = time.perf_counter()
            for start in range(0, ops, 100):
                await limiter.decide(asks[start : start + 100])
            batched.values.append(ops / (time.perf_counter() - started))
            trivial_p.values.append(redis_benchmark(url, ops, 100)[0])
    finally:
        keys = [k async for k in client.scan_iter(f"bench:{run}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
        await client.aclose()
    return [
        Comparison("Redis bucket / trivial EVALSHA (1 client)", ours, trivial, None),
        Comparison("admission pipelined / trivial EVALSHA pipelined", batched, trivial_p, None),
    ], p99


# -- caches ---------------------------------------------------------------------------
def zipf_trace(requests: int, keys: int, s: float = 1.0, seed: int = 7) -> list[int]:
    rng = random.Random(seed)
    weights = [1 / (rank**s) for rank in range(1, keys + 1)]
    cumulative = []
    total = 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    order = list(range(keys))
    rng.shuffle(order)  # popularity is not the key's number
    return [order[i] for i in rng.choices(range(keys), cum_weights=cumulative, k=requests)]


def hit_ratio(cache: Any, trace: list[int]) -> float:
    hits = 0
    for key in trace:
        if cache.get(key) is not None:
            hits += 1
        else:
            cache.put(key, key)
    return hits / len(trace)


def opt_hit_ratio(capacity: int, trace: list[int]) -> float:
    """Belady's OPT: on a miss with a full cache, evict the key used furthest ahead."""
    never = len(trace)
    next_use = [never] * len(trace)
    last: dict[int, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        next_use[i] = last.get(trace[i], never)
        last[trace[i]] = i
    held: dict[int, int] = {}  # key -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, key), lazily cleaned
    hits = 0
    for i, key in enumerate(trace):
        if key in held:
            hits += 1
        elif len(held) >= capacity:
            while True:
                neg, victim = heapq.heappop(heap)
                if held.get(victim) == -neg:
                    del held[victim]
                    break
        held[key] = next_use[i]
        heapq.heappush(heap, (-next_use[i], key))
    return hits / len(trace)


def cache_rounds(rounds: int, trace: list[int]) -> Comparison:
    ours = Series("LRUCache (10 k)", "ops/s")
    theirs = Series("cachetools.LRUCache (10 k)", "ops/s")

    def run_ours() -> None:
        hit_ratio(LRUCache[int, int](10_000), trace)

    def run_theirs() -> None:
        cache: cachetools.LRUCache[int, int] = cachetools.LRUCache(10_000)
        for key in trace:
            if cache.get(key) is None:
                cache[key] = key

    for _ in range(rounds):
        ours.values.append(timed(len(trace), run_ours))
        theirs.values.append(timed(len(trace), run_theirs))
    return Comparison("LRU get/put on a Zipf trace: ours / cachetools", ours, theirs, None)


def hit_ratios(trace: list[int], sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        rows.append(
            {
                "size": size,
                "FIFO": round(hit_ratio(FIFOCache[int, int](size), trace), 4),
                "LRU": round(hit_ratio(LRUCache[int, int](size), trace), 4),
                "LFU": round(hit_ratio(LFUCache[int, int](size), trace), 4),
                "OPT": round(opt_hit_ratio(size, trace), 4),
            }
        )
    return rows


# -- processors on Kafka ----------------------------------------------------------------
async def prefill_requests(bootstrap: str, topic: str, records: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    await producer.start()
    try:
        pending = []
        for n in range(records):
            order = str(10**12 + n)
            body = {
                "order_id": int(order),
                "customer": f"c{n % 2000}",
                "client_ip": f"10.0.{n % 50}.1",
                # the router reads these fields
                "step": "reserve",
                "items": [{"product": f"p{n % 997}", "quantity": 1}],
            }
            value = json.dumps(body, separators=(",", ":")).encode()
            kind = EventType.ORDER_REQUESTED.value if "requests" in topic else "inventory.reserve"
            headers = envelope(kind, order, str(step_id(order, f"bench-{n}")), None)
            pending.append(await producer.send(topic, value, key=order.encode(), headers=headers))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def raw_loop(bootstrap: str, topic: str, output: str, records: int) -> float:
    """The baseline: consume a batch, produce each record, wait for acks, commit."""
    group = f"bench-raw-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=1000,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await consumer.start()
    await producer.start()
    done = 0
    started = 0.0
    try:
        while done < records:
            batches = await consumer.getmany(timeout_ms=300, max_records=1000)
            if batches and not started:
                started = time.perf_counter()
            acks = []
            for records_of in batches.values():
                for r in records_of:
                    acks.append(
                        await producer.send(output, r.value, key=r.key, headers=list(r.headers))
                    )
            await asyncio.gather(*acks)
            if batches:
                await consumer.commit()
            done += sum(len(v) for v in batches.values())
        return records / (time.perf_counter() - started)
    finally:
        await consumer.stop()
        await producer.stop()


class PassThrough:
    """The stream runtime's own cost: decode each record, send its body on unchanged."""

    name = "pass-through"
    accepted_types = frozenset({EventType.ORDER_REQUESTED.value})

    def __init__(self, topic: str, sink: str) -> None:
        self.inputs = (topic,)
        self.sink = sink

    def output_topics(self) -> list[str]:
        return [self.sink]

    async def process(self, batch: list[Incoming]) -> list[Any]:
        return [[Emit(self.sink, m.key.encode(), m.raw, [])] for m in batch]


class Counting:
    """Wraps a processor: counts inputs, times from the first batch, stops at N."""

    def __init__(self, inner: Any, records: int, stop: asyncio.Event) -> None:
        self.inner = inner
        self.name = f"bench-{inner.name}-{uuid.uuid4().hex[:8]}"
        self.inputs = inner.inputs
        self.accepted_types = inner.accepted_types
        self.records, self.stop, self.seen, self.started = records, stop, 0, 0.0

    def output_topics(self) -> list[str]:
        return list(self.inner.output_topics())

    async def process(self, batch: list[Incoming]) -> Any:
        if not self.started:
            self.started = time.perf_counter()
        results = await self.inner.process(batch)
        self.seen += len(batch)
        if self.seen >= self.records:
            self.stop.set()
        return results


async def runner_rate(processor: Any, bootstrap: str, records: int) -> float:
    stop = asyncio.Event()
    counting = Counting(processor, records, stop)
    runner = KafkaStreamRunner(counting, bootstrap, batch_size=1000)  # type: ignore[arg-type]
    await runner.run(stop)
    return records / (time.perf_counter() - counting.started)


async def processor_rounds(rounds: int, records: int, settings: Settings) -> list[Comparison]:
    bootstrap = settings.kafka_bootstrap
    run = uuid.uuid4().hex[:8]
    requests = f"bench.streams.{run}.requests"
    commands = f"bench.streams.{run}.commands"
    sink = f"bench.streams.{run}.out"
    for topic in (requests, commands, sink):
        await ensure_topic(bootstrap, topic, PARTITIONS)
    await prefill_requests(bootstrap, requests, records)
    await prefill_requests(bootstrap, commands, records)
    client = Redis.from_url(settings.redis_url)
    engine = create_engine(settings.database_url)
    shop = ShopSettings()
    raw_a = Series("raw aiokafka consume→produce", "records/s")
    runtime = Series("relaybus stream runtime, pass-through", "records/s")
    admission = Series("admission processor (Redis, 3 buckets)", "records/s")
    raw_r = Series("raw aiokafka consume→produce", "records/s")
    # The runtime runs with the collector mostly out of the way (``fewer_collections``);
    # the raw loop under the same setting, for the record.
    raw_gc = Series("raw aiokafka consume→produce, same GC setting", "records/s")
    routed = Series("inventory router", "records/s")
    try:
        for n in range(rounds):
            raw_a.values.append(await raw_loop(bootstrap, requests, sink, records))
            with fewer_collections():
                raw_gc.values.append(await raw_loop(bootstrap, requests, sink, records))
            runtime.values.append(
                await runner_rate(PassThrough(requests, sink), bootstrap, records)
            )
            processor = AdmissionProcessor(
                RedisAdmission(client, 600, prefix=f"bench:{run}:{n}"), shop, sink, sink
            )
            processor.inputs = (requests,)
            admission.values.append(await runner_rate(processor, bootstrap, records))
            raw_r.values.append(await raw_loop(bootstrap, commands, sink, records))
            router = InventoryRouter(
                session_factory(engine), bootstrap, partitions=PARTITIONS, topic_of=lambda s: sink
            )
            router.inputs = (commands,)
            # Routing by a fixed epoch: the bench leaves the shop's shard set alone.
            router.pin(ShardEpoch(0, tuple(range(10)), 160), HashRing(SHARDS, vnodes=160))
            routed.values.append(await runner_rate(router, bootstrap, records))
            print(
                f"round {n + 1}: raw {raw_a.values[-1]:,.0f}/s, runtime "
                f"{runtime.values[-1]:,.0f}/s, admission "
                f"{admission.values[-1]:,.0f}/s, router {routed.values[-1]:,.0f}/s",
                flush=True,
            )
    finally:
        await client.aclose()
        await engine.dispose()
    return [
        Comparison("admission processor / raw aiokafka loop", admission, raw_a, 0.5),
        Comparison("stream runtime alone (decode, DLQ checks) / raw loop", runtime, raw_a, None),
        Comparison(
            "admission processor / raw loop with the runtime's GC setting", admission, raw_gc, None
        ),
        Comparison("inventory router / raw aiokafka loop", routed, raw_r, None),
    ]


async def main(rounds: int, records: int, keys: int) -> None:
    settings = Settings()
    comparisons = ring_rounds(rounds, keys)
    balance = ring_balance(keys)
    print("ring max/mean:", balance, flush=True)
    comparisons.append(await limiter_rounds(rounds, 200_000))
    redis_comparisons, p99 = await redis_rounds(rounds, 20_000, settings.redis_url)
    comparisons += redis_comparisons
    print("redis p99:", p99, flush=True)
    trace = zipf_trace(1_000_000, 100_000)
    comparisons.append(cache_rounds(rounds, trace))
    ratios = hit_ratios(trace, [1_000, 10_000, 50_000])
    print("hit ratios:", ratios, flush=True)
    comparisons += await processor_rounds(rounds, records, settings)
    md = write(
        "streams",
        {"rounds": rounds, "records": records, "ring_keys": keys},
        comparisons,
    )
    extra = [
        "",
        "Ring balance (max/mean load, 10 shards x 160 vnodes, "
        f"{keys:,} keys): " + ", ".join(f"{k} {v}" for k, v in balance.items()),
        "",
    ]
    extra += ["Redis latency: " + ", ".join(f"{k} {v}" for k, v in p99.items()), ""]
    extra += [
        "Hit ratio, Zipf(1.0), 1 M requests over 100 k keys:",
        "",
        "| cache size | FIFO | LRU | LFU | OPT (Belady) |",
        "| --- | --- | --- | --- | --- |",
    ]
    extra += [
        f"| {r['size']:,} | {r['FIFO']} | {r['LRU']} | {r['LFU']} | {r['OPT']} |" for r in ratios
    ]
    md += "\n".join(extra) + "\n"
    amend("streams", md, ring_balance=balance, redis_p99_ms=p99, hit_ratios=ratios)
    print(md)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--ring-keys", type=int, default=200_000)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.records, args.ring_keys))
