"""Declaring handlers: ``ConsumerApp`` and its ``kafka``/``rabbitmq`` decorators."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.consumers.breaker import CircuitBreaker
from relaybus.consumers.incoming import Incoming, WireLimits
from relaybus.consumers.policy import RetryPolicy
from relaybus.consumers.typed import event_classes, typed
from relaybus.events import EventCatalog, spec_of

HandlerFunc = Callable[[Incoming, AsyncSession | None], Awaitable[None]]
Dedupe = Literal["inbox", "redis", "none"]
# A handler: of ``Incoming``, or of an event class (``relaybus.consumers.typed``).
F = TypeVar("F", bound=Callable[..., Awaitable[None]])


@dataclass(frozen=True)
class KafkaSource:
    """A Kafka topic read by consumer group ``group`` (publish/subscribe across groups,
    competing consumers within one)."""

    topic: str
    group: str
    ordered: bool = False  # retry in place, blocking the key's lane, instead of tiers


@dataclass(frozen=True)
class RabbitSource:
    """A durable queue bound to ``relaybus.events`` with ``binding`` (a topic pattern).

    Workers on the same queue compete (point-to-point); each queue bound to the same
    pattern gets its own copy (publish/subscribe)."""

    queue: str
    binding: str


@dataclass(frozen=True)
class Handler:
    """One handler and how it is run.

    - ``dedupe="inbox"``: the handler gets an ``AsyncSession`` in a transaction that
      also inserts ``inbox(name, message_id)``; effects apply exactly once.
    - ``dedupe="redis"``: ``SET NX`` dedupe (see ``redis_dedupe``).
    - ``dedupe="none"``: no dedupe (at-least-once effects).
    - ``sql``: give the handler a session even without the inbox (always with it).
    - ``batch_size``: Kafka records per shared transaction for SQL handlers.
    - ``types``: accepted ``type`` headers (others are dead-lettered as unknown);
      ``None`` accepts all. The handler raises ``InvalidMessage`` for schema failures.
    - ``timeout``: seconds per attempt; a timeout is a failed attempt.
    - ``breaker``: opened by consecutive failures; while open, consumption pauses.
    - ``max_bytes``, ``max_headers``, ``max_header_bytes``: wire limits (body bytes,
      header count, header bytes); a delivery over any is dead-lettered.
    - ``require_object``: a body that is JSON but not an object is dead-lettered
      (``not-object``) instead of reaching the handler.
    """

    name: str
    func: HandlerFunc
    source: KafkaSource | RabbitSource
    dedupe: Dedupe = "inbox"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float = 30.0
    breaker: CircuitBreaker | None = None
    types: Collection[str] | None = None
    concurrency: int = 16
    max_bytes: int = 1_048_576
    max_headers: int = 64
    max_header_bytes: int = 65_536
    require_object: bool = False
    sql: bool = False
    batch_size: int = 20

    @property
    def limits(self) -> WireLimits:
        return WireLimits(self.max_bytes, self.max_headers, self.max_header_bytes)

    @property
    def uses_sql(self) -> bool:
        """Whether the handler runs in a database transaction (and gets its session)."""
        return self.sql or self.dedupe == "inbox"


class ConsumerApp:
    """A named set of handlers run together by ``relaybus worker module:attr``.

    A handler's first parameter may be annotated with an ``@event`` class (or a union
    of them): it then receives the validated instance (``relaybus.consumers.typed``),
    older versions lifted by ``events``' upcasters, and ``types`` defaults to the
    classes' types. ``events`` collects every event class the handlers name, for the
    AsyncAPI document too.
    """

    def __init__(self, name: str, events: EventCatalog | None = None) -> None:
        self.name = name
        self.handlers: list[Handler] = []
        self.events = events if events is not None else EventCatalog()

    def _handler(
        self,
        name: str,
        func: Callable[..., Awaitable[None]],
        source: KafkaSource | RabbitSource,
        options: dict[str, object],
    ) -> Handler:
        classes = event_classes(func)
        if classes:
            options.setdefault("types", frozenset(spec_of(cls).type for cls in classes))
            func = typed(func, classes, self.events)
        return Handler(name, func, source, **options)  # type: ignore[arg-type]

    def kafka(
        self,
        topic: str,
        *,
        group: str | None = None,
        name: str | None = None,
        ordered: bool = False,
        **options: object,
    ) -> Callable[[F], F]:
        """Register ``func`` for ``topic``; ``group`` and ``name`` default to the
        function's name. ``options`` are ``Handler`` fields (dedupe, retry, …)."""

        def register(func: F) -> F:
            handler_name = name or func.__name__
            source = KafkaSource(topic, group or handler_name, ordered)
            self.handlers.append(self._handler(handler_name, func, source, dict(options)))
            return func

        return register

    def rabbitmq(
        self,
        queue: str,
        *,
        binding: str = "#",
        name: str | None = None,
        **options: object,
    ) -> Callable[[F], F]:
        """Register ``func`` for ``queue`` (declared, bound with ``binding``)."""

        def register(func: F) -> F:
            handler_name = name or func.__name__
            source = RabbitSource(queue, binding)
            self.handlers.append(self._handler(handler_name, func, source, dict(options)))
            return func

        return register
