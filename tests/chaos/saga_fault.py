"""S9: the flash sale with a failure injected at each step of its saga.

Besides the gateway's own failures at the payment step (declined charges, timeouts
whose outcome the saga must find out) and the stock running out at the reservation
step (compensation), every process a saga passes through fails once, in saga order,
at evenly spaced points of the sale: SIGKILLed and restarted, the relay (order
placed), admission, the inventory router, an inventory shard (reserve / release), the
payments worker (charge / refund), the orders worker (confirm / cancel) and the saga
agent itself; the payment gateway, a third party, is frozen for 5 s instead (an
outage: calls hang and time out; killing the in-memory test double would erase its
ledger, which no real provider does). Pass: the shop report's invariants (stock
conserved exactly, every order final, so no saga stuck, charges exactly for the
confirmed orders, refunds only for cancelled ones, no dead letters).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from relaybus.settings import Settings
from relaybus.shop.cli.demo import run_flash_sale
from relaybus.shop.cli.flashsale import Workload
from relaybus.shop.cli.processes import Shop
from relaybus.shop.cli.shop_report import ShopReport
from relaybus.shop.settings import ShopSettings
from relaybus.stack.procs import pid_alive
from tests.support.shop import shop_settings

GATEWAY_OUTAGE_S = 5.0  # longer than the payments worker's call timeout

# The processes an order's saga passes through, in that order.
SAGA_STEPS = (
    "relay",
    "admission",
    "router",
    "inventory-shard-0",
    "gateway",
    "payments",
    "orders",
    "saga",
)


def saga_shop() -> ShopSettings:
    """The shop with the gateway's failures on: 20 % declined, 5 % timeouts."""
    return shop_settings(gateway_failure_rate=0.2, gateway_timeout_rate=0.05, gateway_seed=11)


async def saga_faults(
    settings: Settings, shop: ShopSettings, processes: Shop, orders: int, seed: int = 2
) -> tuple[ShopReport, dict[str, Any]]:
    """Run the sale of ``orders`` orders with one SIGKILL per saga step; the report
    and the run's figures (kills done, when, statuses, seconds)."""
    every = orders // (len(SAGA_STEPS) + 1)
    plan = {every * (n + 1): name for n, name in enumerate(SAGA_STEPS)}
    done: list[str] = []
    began = time.monotonic()
    loop = asyncio.get_running_loop()
    gateway = processes.children["gateway"]
    frozen: list[int] = []

    def thaw() -> None:
        while frozen:
            pid = frozen.pop()
            if pid_alive(pid):
                os.kill(pid, signal.SIGCONT)

    def fault(placed: int) -> None:
        name = plan.get(placed)
        if name is None or name in done:
            return
        done.append(name)
        if name == "gateway":
            # The third party's outage: frozen, so calls hang and time out; its
            # charges survive (a SIGKILL would wipe the in-memory test double's
            # ledger, a loss no real payment provider has).
            assert gateway.proc is not None
            os.kill(gateway.proc.pid, signal.SIGSTOP)
            frozen.append(gateway.proc.pid)
            loop.call_later(GATEWAY_OUTAGE_S, thaw)
            return
        processes.children[name].kill()  # SIGKILL: no flush, no hand-over
        processes.children[name].start()

    workload = Workload(orders=orders, products=5, stock=orders // 12, seed=seed)
    try:
        _, report = await run_flash_sale(settings, shop, workload, processes, 600, None, fault)
    finally:
        thaw()  # never leave the gateway frozen, whatever happened
    figures = {
        "orders": report.orders,
        "killed (in saga order)": done,
        "statuses": report.statuses,
        "cancelled by reason": report.cancelled_by_reason,
        "stock conserved": all(line.conserved for line in report.products),
        "charges": report.charges,
        "dead letters": report.dead_letters,
        "problems": report.problems[:10],
        "seconds": round(time.monotonic() - began, 1),
    }
    return report, figures
