"""A simulated payment gateway (FastAPI): ``relaybus serve gateway``.

It behaves like a real one where it matters to the saga:
- every call takes ``gateway_latency`` seconds;
- a charge is declined with probability ``gateway_failure_rate``;
- with probability ``gateway_timeout_rate`` the charge is decided and **stored**, but
  the answer comes only after ``gateway_slow_seconds``: the client times out and must
  ask ``GET /charges/{key}`` what happened;
- charges and refunds are idempotent by the client's key: the same key never charges
  twice; a refund of a key that was never charged *voids* it, so a charge that
  arrives later with that key is refused (status ``voided``).

State is in memory (this is a test double for a third party; it lives as long as the
demo). ``GET /charges`` lists every charge, for the demo's invariant checks.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field

from relaybus.shop.settings import ShopSettings

KEY = Annotated[str, Path(min_length=1, max_length=255)]


class ChargeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    key: str = Field(min_length=1, max_length=255)
    amount_cents: int = Field(gt=0)


class Charge(BaseModel):
    """A charge as the gateway keeps it."""

    charge_id: str
    key: str
    amount_cents: int
    status: Literal["charged", "declined", "refunded", "voided"]
    reason: str | None = None
    refunded_cents: int = 0


def create_gateway(shop: ShopSettings, slow_seconds: float | None = None) -> FastAPI:
    """The gateway app. ``slow_seconds`` (default: three times ``payment_timeout``) is how late a
    timed-out answer comes."""
    rng = random.Random(shop.gateway_seed)
    charges: dict[str, Charge] = {}
    slow = slow_seconds if slow_seconds is not None else 3 * shop.payment_timeout
    app = FastAPI(title="simulated payment gateway", version="1")

    @app.post("/charges")
    async def charge(request: ChargeRequest) -> Charge:
        """Charge once per key; the same key returns the first result."""
        await asyncio.sleep(shop.gateway_latency)
        existing = charges.get(request.key)
        if existing is not None:
            return existing
        declined = rng.random() < shop.gateway_failure_rate
        late = rng.random() < shop.gateway_timeout_rate
        charges[request.key] = Charge(
            charge_id=str(uuid.uuid4()),
            key=request.key,
            amount_cents=request.amount_cents,
            status="declined" if declined else "charged",
            reason="card declined" if declined else None,
        )
        if late:
            await asyncio.sleep(slow)
        return charges[request.key]

    @app.get("/charges/{key}")
    async def charge_status(key: KEY) -> Charge:
        """What happened to the charge with ``key`` (404: never charged)."""
        await asyncio.sleep(shop.gateway_latency)
        found = charges.get(key)
        if found is None:
            raise HTTPException(404, f"no charge with key {key!r}")
        return found

    @app.post("/charges/{key}/refund")
    async def refund(key: KEY) -> Charge:
        """Refund the charge with ``key`` (idempotent), or void the key if it was never
        charged (a later charge with it is refused)."""
        await asyncio.sleep(shop.gateway_latency)
        found = charges.get(key)
        if found is None:
            found = charges[key] = Charge(
                charge_id=str(uuid.uuid4()),
                key=key,
                amount_cents=0,
                status="voided",
                reason="refunded before any charge",
            )
        elif found.status == "charged":
            found.status = "refunded"
            found.refunded_cents = found.amount_cents
        return found

    @app.get("/charges")
    async def all_charges() -> list[dict[str, Any]]:
        """Every charge (for checks and reports)."""
        return [c.model_dump() for c in charges.values()]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
