"""The admission processor: ``order.requested`` → ``order.admitted`` | ``order.throttled``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime

from relaybus.consumers.incoming import Incoming, InvalidMessage
from relaybus.message import rfc3339
from relaybus.shop.contract import (
    ADMITTED,
    ORDER_REQUESTS,
    ORDERS_ADMITTED,
    ORDERS_THROTTLED,
    THROTTLED,
    EventType,
    OrderRequested,
    parse_keyed,
    step_id_text,
)
from relaybus.shop.settings import ShopSettings
from relaybus.shop.streams.admission.limits import Ask, Limit, RedisAdmission
from relaybus.streams.envelope import EnvelopeTemplate
from relaybus.streams.runtime.processor import Emit, Result


class AdmissionProcessor:
    """Limits order requests per customer, per client address and in all; VIPs pass.

    For each ``order.requested`` it sends exactly one decision, keyed by the order id:
    ``order.admitted`` to ``shop.order.admitted`` (the orders service makes it an
    order) or ``order.throttled`` with the limit as its reason to
    ``shop.order.throttled`` (the orders service marks it REJECTED). Decision ids are
    ``step_id(order, "admitted"|"throttled")`` and the decision itself is remembered in
    Redis, so a redelivered request produces the same message again (dropped by the
    orders inbox) and takes no second token.

    A VIP (the request's ``vip``, which the orders API takes from the caller's API
    key, or a customer in ``admission_vip``) is admitted without touching any bucket.
    ``client_ip`` is already a limit key (``relaybus.client_address.limit_key``). A request
    whose body does not fit, or whose key is not its order id, is dead-lettered.
    Stateless apart from Redis: any number of instances share the buckets.
    """

    name = "admission"
    inputs: tuple[str, ...] = (ORDER_REQUESTS,)
    accepted_types: frozenset[str] = frozenset({EventType.ORDER_REQUESTED.value})

    def __init__(
        self,
        limiter: RedisAdmission,
        shop: ShopSettings,
        admitted_topic: str = ORDERS_ADMITTED,
        throttled_topic: str = ORDERS_THROTTLED,
    ) -> None:
        self.limiter = limiter
        self.admitted_topic = admitted_topic
        self.throttled_topic = throttled_topic
        self.vip = frozenset(shop.admission_vip)
        self.user = Limit("per-user", shop.admission_user_rate, shop.admission_user_burst)
        self.ip = Limit("per-ip", shop.admission_ip_rate, shop.admission_ip_burst)
        self.all = Limit("global", shop.admission_global_rate, shop.admission_global_burst)
        self._limits = (self.user, self.ip, self.all)  # one tuple shared by every Ask
        # Decision bodies differ only in the order id: each reason is JSON-encoded once.
        self._reasons = {
            refused: json.dumps(
                "within limits" if refused is None else f"{refused.describe()} exceeded"
            ).encode()
            for refused in (None, self.user, self.ip, self.all)
        }
        self._vip_reason = json.dumps("vip").encode()

    def output_topics(self) -> list[str]:
        return [self.admitted_topic, self.throttled_topic]

    async def process(self, batch: Sequence[Incoming]) -> list[Result]:
        requests: list[OrderRequested | InvalidMessage] = []
        asks: list[Ask] = []
        for message in batch:
            try:
                request = parse_keyed(OrderRequested, message.payload, message.key)
            except InvalidMessage as err:
                requests.append(err)
                continue
            requests.append(request)
            if not self._is_vip(request):
                asks.append(
                    self.buckets_for(request.customer, request.client_ip, str(request.order_id))
                )
        # Two script calls, the second running in Redis while the first half's
        # decisions are built here (the calls are in order: the second is sent
        # after the first has answered, so requests are still decided in order).
        half = len(asks) // 2
        decided = await self.limiter.decide(asks[:half])
        rest = asyncio.ensure_future(self.limiter.decide(asks[half:]))
        try:
            return await self._results(batch, requests, decided, rest)
        finally:
            if not rest.done():  # building failed: do not leave the call behind
                rest.cancel()
            elif not rest.cancelled():
                rest.exception()  # retrieved: the batch's error is the one raised here

    async def _results(
        self,
        batch: Sequence[Incoming],
        requests: list[OrderRequested | InvalidMessage],
        decided: list[Limit | None],
        rest: asyncio.Future[list[Limit | None]],
    ) -> list[Result]:
        """One result per request: its decision record, or its refusal; the second
        half's decisions are awaited when the first half's are used up."""
        now = rfc3339(datetime.now(UTC))
        admitted = EnvelopeTemplate(ADMITTED, occurred_at=now)
        throttled = EnvelopeTemplate(THROTTLED, occurred_at=now)
        results: list[Result] = []
        used = 0
        for message, outcome in zip(batch, requests, strict=True):
            if isinstance(outcome, InvalidMessage):
                results.append(outcome)
                continue
            order = str(outcome.order_id)
            if self._is_vip(outcome):
                topic, template, step, reason = (
                    self.admitted_topic,
                    admitted,
                    "admitted",
                    self._vip_reason,
                )
            else:
                if used == len(decided):
                    decided = decided + await rest
                refused = decided[used]
                used += 1
                reason = self._reasons[refused]
                if refused is None:
                    topic, template, step = self.admitted_topic, admitted, "admitted"
                else:
                    topic, template, step = self.throttled_topic, throttled, "throttled"
            body = b'{"order_id":%d,"reason":%s}' % (outcome.order_id, reason)
            headers = template.headers(order, step_id_text(order, step), str(message.id))
            results.append([Emit(topic, order.encode(), body, headers)])
        await rest  # a future: awaiting it again is a no-op; no call is left behind
        return results

    def _is_vip(self, request: OrderRequested) -> bool:
        return request.vip or request.customer in self.vip

    def buckets_for(self, customer: str, client_ip: str, request_id: str) -> Ask:
        """The question for one request: its customer's, its address's and the global
        bucket, all or nothing."""
        return Ask(
            request_id,
            (f"user:{customer}", f"ip:{client_ip}", "global"),
            self._limits,
        )
