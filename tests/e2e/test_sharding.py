"""Inventory shards on the real stack: a shard added while the flash sale runs loses
no command and breaks no per-product order (checked from the shard workers' command
log: the router's sequence numbers per product, in the order they were applied), and
only the products the ring moves change shard, all to the new one."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import text

from relaybus.db import create_engine
from relaybus.settings import Settings
from relaybus.shop.cli.demo import run_flash_sale
from relaybus.shop.cli.flashsale import Workload
from relaybus.shop.cli.processes import default_names
from relaybus.shop.settings import ShopSettings
from relaybus.streams.sharding import HashRing
from tests.support.cli import run_cli
from tests.support.shop import ShopStarter, env_of, shop_settings


@pytest.mark.timeout(900)
async def test_a_shard_added_during_the_sale_loses_nothing_and_keeps_per_product_order(
    tmp_path: Path, settings: Settings, start_shop: ShopStarter
) -> None:
    shop: ShopSettings = shop_settings(
        gateway_failure_rate=0.1, gateway_timeout_rate=0.0, inventory_shards=[0, 1]
    )
    workload = Workload(orders=450, products=12, stock=30, seed=5, users=5000)
    resharded: list[int] = []

    outcome: list[int] = []

    def add_a_shard(placed: int) -> None:
        # In line: the new epoch exists before order 151 is placed, so commands are
        # still flowing when the router meets it. (The sale's client waits meanwhile;
        # a connection the API closed in between is retried with the same key.)
        if placed == 150 and not resharded:
            proc = run_cli("shards", "set", "0", "1", "2", "--note", "test", env=env_of(shop))
            outcome.append(proc.returncode)
            resharded.append(placed)

    # The new shard's worker runs from the start; it gets commands once the router
    # switches to the new epoch.
    processes = start_shop(shop, [*default_names(shop), "inventory-shard-2"])
    placed, report = await run_flash_sale(
        settings, shop, workload, processes, 600, None, on_placed=add_a_shard
    )
    assert resharded == [150]
    assert outcome == [0]
    assert report.ok, report.problems[:20]
    assert len(placed.order_ids) == workload.orders
    skus = [line.sku for line in report.products]

    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            log = (
                await conn.execute(
                    text(
                        "SELECT product, route_seq, epoch, shard, order_id, command "
                        "FROM inventory.command_log WHERE product = ANY(:skus) ORDER BY id"
                    ),
                    {"skus": skus},
                )
            ).all()
            epochs = {
                row.epoch: [str(s) for s in row.shards]
                for row in await conn.execute(
                    text("SELECT epoch, shards FROM inventory.shard_epochs")
                )
            }
            reserved = set(
                (
                    await conn.execute(
                        text(
                            "SELECT order_id FROM inventory.reservations WHERE order_id = ANY(:ids)"
                        ),
                        {"ids": placed.order_ids},
                    )
                ).scalars()
            )
    finally:
        await engine.dispose()

    per_product: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for row in log:
        per_product[row.product].append((row.route_seq, row.epoch, row.shard))
    seen_epochs = {row.epoch for row in log}
    assert len(seen_epochs) == 2, seen_epochs  # the switch happened during the sale
    old, new = sorted(seen_epochs)
    assert epochs[new] == ["0", "1", "2"]
    rings = {e: HashRing(epochs[e], vnodes=shop.inventory_vnodes) for e in seen_epochs}
    moved = set()
    for product, applied in per_product.items():
        seqs = [seq for seq, _, _ in applied]
        assert seqs == sorted(seqs), product  # applied in the order routed
        assert len(set(seqs)) == len(seqs), product
        assert [e for _, e, _ in applied] == sorted(e for _, e, _ in applied), product
        for _, epoch, shard in applied:
            assert str(shard) == rings[epoch].node_for(product), (product, epoch, shard)
        shards = {(e, s) for _, e, s in applied}
        before = {s for e, s in shards if e == old}
        after = {s for e, s in shards if e == new}
        if before and after and before != after:
            moved.add(product)
            assert after == {2}, product  # a moved product moved to the new shard
    # Nothing lost: every order that reached inventory has its reserve in the log.
    logged = {row.order_id for row in log if row.command == "inventory.reserve"}
    assert reserved <= logged
    assert len(per_product) == len(skus)
    assert moved or all(rings[new].node_for(p) != "2" for p in per_product)
