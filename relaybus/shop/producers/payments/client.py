"""The payments service's gateway client: timeouts, bounded retries, status lookups."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from relaybus.backoff import Backoff

log = logging.getLogger("relaybus.payments")


class GatewayUnavailable(RuntimeError):
    """The gateway did not answer within the retries: the outcome is unknown. The
    caller fails the message (it is retried later; the breaker counts it)."""


@dataclass(frozen=True)
class GatewayCharge:
    """The gateway's record of a key: ``charged``, ``declined``, ``refunded`` or ``voided``."""

    key: str
    status: str
    amount_cents: int
    charge_id: str
    reason: str | None
    refunded_cents: int

    @classmethod
    def of(cls, body: Any) -> GatewayCharge:
        return cls(
            key=str(body["key"]),
            status=str(body["status"]),
            amount_cents=int(body["amount_cents"]),
            charge_id=str(body["charge_id"]),
            reason=body.get("reason"),
            refunded_cents=int(body.get("refunded_cents", 0)),
        )


class GatewayClient:
    """Calls the gateway with a per-call ``timeout`` and at most ``retries`` retries
    (backoff with jitter) on timeouts, connection errors and 5xx answers.

    A charge whose call timed out is **resolved by asking**: ``GET /charges/{key}``
    says whether the gateway made it, and only a 404 (it never got the request) lets
    the charge be sent again, with the same key (the gateway charges a key once
    anyway). Nothing is guessed: if no answer comes, ``GatewayUnavailable``.
    """

    def __init__(self, base_url: str, *, timeout: float = 1.0, retries: int = 3) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self.retries = retries

    async def aclose(self) -> None:
        await self.http.aclose()

    async def charge(self, key: str, amount_cents: int) -> GatewayCharge:
        """Charge ``amount_cents`` once under ``key``; the gateway's record of it."""
        backoff = Backoff(initial=0.05, maximum=1.0)
        for attempt in range(self.retries + 1):
            try:
                response = await self.http.post(
                    "/charges", json={"key": key, "amount_cents": amount_cents}
                )
                if response.status_code < 500:
                    response.raise_for_status()
                    return GatewayCharge.of(response.json())
                log.warning("gateway: charge %s answered %d", key, response.status_code)
            except httpx.TimeoutException:
                log.info("gateway: charge %s timed out (attempt %d); asking", key, attempt + 1)
                found = await self._lookup(key)
                if found is not None:
                    return found
            except httpx.TransportError as err:
                log.warning("gateway: charge %s failed: %r", key, err)
            await asyncio.sleep(backoff.next_delay())
        raise GatewayUnavailable(f"no answer for charge {key} after {self.retries + 1} tries")

    async def refund(self, key: str) -> GatewayCharge:
        """Refund the charge under ``key`` (or void the key); idempotent at the gateway."""
        return GatewayCharge.of(await self._call("POST", f"/charges/{key}/refund"))

    async def _lookup(self, key: str) -> GatewayCharge | None:
        backoff = Backoff(initial=0.05, maximum=1.0)
        for _ in range(self.retries + 1):
            try:
                response = await self.http.get(f"/charges/{key}")
                if response.status_code == 404:
                    return None
                if response.status_code < 500:
                    response.raise_for_status()
                    return GatewayCharge.of(response.json())
            except httpx.TransportError as err:  # timeouts included
                log.warning("gateway: status of %s failed: %r", key, err)
            await asyncio.sleep(backoff.next_delay())
        raise GatewayUnavailable(f"no answer about charge {key}")

    async def _call(self, method: str, path: str) -> Any:
        backoff = Backoff(initial=0.05, maximum=1.0)
        for _ in range(self.retries + 1):
            try:
                response = await self.http.request(method, path)
                if response.status_code < 500:
                    response.raise_for_status()
                    return response.json()
            except httpx.TransportError as err:
                log.warning("gateway: %s %s failed: %r", method, path, err)
            await asyncio.sleep(backoff.next_delay())
        raise GatewayUnavailable(f"no answer for {method} {path}")
