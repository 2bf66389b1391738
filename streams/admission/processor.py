"""The admission processor: ``order.requested`` → ``order.admitted`` | ``order.throttled``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from consumers.incoming import Incoming, InvalidMessage
from producers.contract import (
    ADMITTED,
    ORDER_REQUESTS,
    ORDERS_ADMITTED,
    ORDERS_THROTTLED,
    THROTTLED,
    EventType,
    OrderRequested,
    parse_keyed,
    step_id,
)
from producers.settings import ShopSettings
from relaybus.message import rfc3339
from streams.admission.limits import Ask, Limit, RedisAdmission
from streams.envelope import envelope
from streams.runtime.processor import Emit, Result


class AdmissionProcessor:
    """Limits order requests per customer, per client address and in all; VIPs pass.

    For each ``order.requested`` it sends exactly one decision, keyed by the order id:
    ``order.admitted`` to ``shop.order.admitted`` (the orders service makes it an
    order) or ``order.throttled`` with the limit as its reason to
    ``shop.order.throttled`` (the orders service marks it REJECTED). Decision ids are
    ``step_id(order, "admitted"|"throttled")`` and the decision itself is remembered in
    Redis, so a redelivered request produces the same message again (dropped by the
    orders inbox) and takes no second token.

    A customer in ``admission_vip`` is admitted without touching any bucket. A request
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
        self.prefix = limiter.prefix

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
            if request.customer not in self.vip:
                asks.append(
                    self._buckets_for(request.customer, request.client_ip, str(request.order_id))
                )
        decisions = iter(await self.limiter.decide(asks))
        now = rfc3339(datetime.now(UTC))
        results: list[Result] = []
        for message, outcome in zip(batch, requests, strict=True):
            if isinstance(outcome, InvalidMessage):
                results.append(outcome)
                continue
            refused = None if outcome.customer in self.vip else next(decisions)
            results.append([self._decision(message, outcome, refused, now)])
        return results

    def _buckets_for(self, customer: str, client_ip: str, request_id: str) -> Ask:
        """The question for one request: its customer's, its address's and the global
        bucket, all or nothing."""
        return Ask(
            request_id,
            [
                (f"{self.prefix}:user:{customer}", self.user),
                (f"{self.prefix}:ip:{client_ip}", self.ip),
                (f"{self.prefix}:global", self.all),
            ],
        )

    def _decision(
        self, message: Incoming, request: OrderRequested, refused: Limit | None, now: str
    ) -> Emit:
        order = str(request.order_id)
        if refused is None:
            reason = "vip" if request.customer in self.vip else "within limits"
            topic, kind, step = self.admitted_topic, ADMITTED, "admitted"
        else:
            reason = f"{refused.describe()} exceeded"
            topic, kind, step = self.throttled_topic, THROTTLED, "throttled"
        body = {"order_id": request.order_id, "reason": reason}
        return Emit(
            topic,
            order.encode(),
            json.dumps(body, separators=(",", ":")).encode(),
            envelope(kind, order, str(step_id(order, step)), str(message.id), "admission", now),
        )
