"""The flash sale end to end on the real stack: every shop process a real child, orders
over HTTP, and the invariants read from each service's own tables and the gateway.

- 400 orders over 5 products of 40 units (more orders than units), 20 % declined
  payments, 5 % gateway timeouts: stock conserved exactly, every order final, charges
  exactly for confirmed orders, refunds only for cancelled ones, no dead letters.
- S9 of the fault matrix: the same with every process of the saga SIGKILLed once, in
  saga order, and restarted: the same invariants.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relaybus.settings import Settings
from relaybus.shop.cli.demo import run_flash_sale
from relaybus.shop.cli.flashsale import Workload
from relaybus.shop.settings import ShopSettings
from tests.chaos.saga_fault import SAGA_STEPS, saga_faults, saga_shop
from tests.support.shop import ShopStarter, shop_settings


def _shop(**overrides: object) -> ShopSettings:
    return shop_settings(
        gateway_failure_rate=0.2, gateway_timeout_rate=0.05, gateway_seed=11, **overrides
    )


def _explain(report_problems: list[str], logs: Path) -> str:
    tails = "\n".join(
        f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-8:])
        for log in sorted(logs.glob("*.log"))
    )
    return "\n".join(report_problems[:20]) + "\n" + tails


@pytest.mark.timeout(900)
@pytest.mark.slow
async def test_flash_sale_keeps_every_invariant(
    tmp_path: Path, settings: Settings, start_shop: ShopStarter
) -> None:
    shop = _shop()
    workload = Workload(orders=400, products=5, stock=40, seed=1)
    processes = start_shop(shop)
    placed, report = await run_flash_sale(settings, shop, workload, processes, 600, None)
    assert report.ok, _explain(report.problems, tmp_path)
    assert len(placed.order_ids) == 400
    assert report.statuses["CONFIRMED"] + report.statuses["CANCELLED"] == 400
    assert sum(line.sold for line in report.products) > 0
    # The workload exercised every path: refusals, declines and at least one timeout.
    assert report.cancelled_by_reason.get("out of stock", 0) > 0
    assert report.cancelled_by_reason.get("payment failed", 0) > 0
    assert report.charges.get("charged", 0) == report.statuses["CONFIRMED"]


@pytest.mark.timeout(900)
@pytest.mark.slow
async def test_s9_a_failure_at_each_saga_step_keeps_every_invariant(
    tmp_path: Path, settings: Settings, start_shop: ShopStarter
) -> None:
    """The fault matrix's S9 (tests/chaos/saga_fault.py), CI size: 450 orders, every
    process of the saga SIGKILLed once in saga order, the gateway failing 25 %."""
    shop = saga_shop()
    processes = start_shop(shop)
    report, figures = await saga_faults(settings, shop, processes, orders=450)
    print("S9", json.dumps(figures))
    assert figures["killed (in saga order)"] == list(SAGA_STEPS)
    assert report.ok, _explain(report.problems, tmp_path)
    assert report.statuses["CONFIRMED"] + report.statuses["CANCELLED"] == 450
    assert report.cancelled_by_reason.get("out of stock", 0) > 0
    assert report.cancelled_by_reason.get("payment failed", 0) > 0
