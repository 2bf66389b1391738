"""Typed events: pydantic models declared with a type name and a version, and the
upcasters that lift an older version's payload to the next.

    @event("order.created", version=2, key="order_id")
    class OrderCreated(BaseModel):
        order_id: str
        quantity: int
        channel: str = "web"

    catalog = EventCatalog(OrderCreatedV1, OrderCreated)

    @catalog.upcaster("order.created", from_version=1)
    def add_channel(v1: dict[str, Any]) -> dict[str, Any]:
        return {**v1, "channel": "web"}

The writer (``Outbox.enqueue(session, OrderCreated(...))``) serialises the instance
once and sets the ``type`` and ``schema_version`` headers; a consumer reads a payload
of any version it can lift (``EventCatalog.read``). Upcasters are pure functions of a
JSON object (dict → dict): they run on untrusted input, before validation; one that
raises refuses the record (``schema``), it never stops the consumer.

Nothing here is global: a decorator only marks its class; a catalog is built by the
process that needs it (its composition root or its ``ConsumerApp``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

_SPEC = "__relaybus_event__"
M = TypeVar("M", bound=type[BaseModel])
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# ``schema_version`` header values: a positive decimal integer, nothing else.
_VERSION = re.compile(r"[1-9][0-9]{0,8}")
# How much of a refused payload an error may quote (never more: values may be personal).
EXCERPT_CHARS = 120
# Validation errors listed per refusal; the rest are counted.
MAX_ERRORS = 10


@dataclass(frozen=True)
class EventSpec:
    """What ``@event`` declared: the ``type`` header, the version, and optionally the
    outbox aggregate type and the field holding the aggregate id (the message key)."""

    type: str
    version: int
    aggregate_type: str | None = None
    key: str | None = None


class EventRefused(ValueError):
    """A payload that cannot become the event asked for. ``reason`` is the dead-letter
    reason: ``schema`` (validation failed; ``detail`` lists the failing locations and
    error kinds, never their values) or ``unknown-version`` (newer than this catalog
    knows, older with no upcaster chain, or not a version number)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def event(
    name: str, /, *, version: int = 1, aggregate_type: str | None = None, key: str | None = None
) -> Callable[[M], M]:
    """Mark a pydantic model as version ``version`` of event type ``name``.

    ``aggregate_type`` and ``key`` (a field name) let ``Outbox.enqueue`` fill in the
    aggregate without arguments. Raises ``TypeError`` on a class that is not a pydantic
    model, ``ValueError`` on a version below 1 or a key that is not a field.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("an event type is a non-empty string")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"an event version is an integer >= 1, got {version!r}")

    def mark(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            raise TypeError(f"@event decorates a pydantic BaseModel, not {cls!r}")
        fields: dict[str, Any] = dict(getattr(cls, "model_fields", {}))
        if key is not None and key not in fields:
            raise ValueError(f"@event key {key!r} is not a field of {cls.__name__}")
        setattr(cls, _SPEC, EventSpec(name, version, aggregate_type, key))
        return cls

    return mark


def spec_of(model: type[BaseModel] | BaseModel) -> EventSpec:
    """The ``EventSpec`` of an event class or instance; ``TypeError`` if undeclared."""
    cls = model if isinstance(model, type) else type(model)
    spec = cls.__dict__.get(_SPEC)  # own, not inherited: a subclass declares itself
    if not isinstance(spec, EventSpec):
        raise TypeError(f"{cls.__name__} is not declared with @event")
    return spec


def is_event_class(candidate: object) -> bool:
    """Whether ``candidate`` is a class declared with ``@event``."""
    return isinstance(candidate, type) and isinstance(candidate.__dict__.get(_SPEC), EventSpec)


def parse_version(header: str | None) -> int:
    """A ``schema_version`` header as an int: absent means 1 (events written before
    versions existed); anything but a positive integer is ``unknown-version``."""
    if header is None or header == "":
        return 1
    if not _VERSION.fullmatch(header):
        raise EventRefused("unknown-version", f"schema_version {header[:40]!r} is not a version")
    return int(header)


def validation_detail(err: ValidationError) -> str:
    """A pydantic error as its locations and kinds (``quantity: int_parsing``), bounded;
    the offending values are left out."""
    problems = err.errors(include_url=False, include_input=False, include_context=False)
    shown = [
        f"{'.'.join(str(part) for part in problem['loc']) or '(root)'}: {problem['type']}"
        for problem in problems[:MAX_ERRORS]
    ]
    more = len(problems) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


class EventCatalog:
    """The event classes (every version) and the upcasters one process knows.

    ``read(cls, version, payload)`` is the consumer's contract: a payload of
    ``version`` lifted through the upcasters to ``cls``'s version, then validated.
    Upcasters run in version order, each exactly once; the result of the last is
    validated. Thread-safe to read once built; adding is for composition time.
    """

    def __init__(self, *classes: type[BaseModel]) -> None:
        self._classes: dict[str, dict[int, type[BaseModel]]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        for cls in classes:
            self.add(cls)

    def add(self, cls: M) -> M:
        """Register an event class (usable as a decorator under ``@event``); a second
        class for the same type and version is a ``ValueError``."""
        spec = spec_of(cls)
        versions = self._classes.setdefault(spec.type, {})
        if versions.get(spec.version, cls) is not cls:
            raise ValueError(f"{spec.type} v{spec.version} is declared twice")
        versions[spec.version] = cls
        return cls

    def upcaster(self, name: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register the function that lifts event type ``name``'s payload from
        ``from_version`` to ``from_version + 1``."""

        def register(func: Upcaster) -> Upcaster:
            if (name, from_version) in self._upcasters:
                raise ValueError(f"{name} v{from_version} already has an upcaster")
            self._upcasters[(name, from_version)] = func
            return func

        return register

    def types(self) -> list[str]:
        """Every event type, sorted."""
        return sorted(self._classes)

    def versions(self, name: str) -> Mapping[int, type[BaseModel]]:
        """Event type ``name``'s classes by version (empty if unknown)."""
        return dict(sorted(self._classes.get(name, {}).items()))

    def latest(self, name: str) -> type[BaseModel] | None:
        """The newest class of event type ``name``, or None."""
        versions = self._classes.get(name)
        return versions[max(versions)] if versions else None

    def upcasters(self, name: str) -> list[int]:
        """The versions of ``name`` that have an upcaster to the next, sorted."""
        return sorted(v for (t, v) in self._upcasters if t == name)

    def upcast(self, name: str, payload: Any, *, from_version: int, to_version: int) -> Any:
        """``payload`` lifted from ``from_version`` to ``to_version``. Raises
        ``EventRefused("unknown-version")`` when ``from_version`` is newer than
        ``to_version`` or a link of the chain is missing."""
        if from_version > to_version:
            raise EventRefused(
                "unknown-version",
                f"{name} v{from_version} is newer than the v{to_version} this consumer reads",
            )
        for version in range(from_version, to_version):
            lift = self._upcasters.get((name, version))
            if lift is None:
                raise EventRefused(
                    "unknown-version", f"{name} v{version} has no upcaster to v{version + 1}"
                )
            if not isinstance(payload, dict):
                raise EventRefused("schema", f"(root): {name} v{version} payload is not an object")
            try:
                payload = lift(payload)
            except Exception as err:  # the record's verdict: it did not fit v{version}
                raise EventRefused(
                    "schema",
                    f"(root): the upcaster of {name} v{version} refused it "
                    f"({type(err).__name__}: {str(err)[:EXCERPT_CHARS]})",
                ) from None
        return payload

    def read(self, cls: type[BaseModel], version: int, payload: Any) -> BaseModel:
        """``payload``, written as ``version`` of ``cls``'s type, as a ``cls``
        instance. Raises ``EventRefused`` (``unknown-version`` or ``schema``, also
        when an upcaster raises: it ran on a payload that did not fit its version)."""
        spec = spec_of(cls)
        lifted = self.upcast(spec.type, payload, from_version=version, to_version=spec.version)
        try:
            return cls.model_validate(lifted)
        except ValidationError as err:
            raise EventRefused("schema", validation_detail(err)) from None

    def merge_upcasters(self, other: EventCatalog) -> None:
        """Add ``other``'s upcasters (the same function twice is harmless)."""
        for (name, version), func in other._upcasters.items():
            if self._upcasters.get((name, version), func) is not func:
                raise ValueError(f"{name} v{version} has two different upcasters")
            self._upcasters[(name, version)] = func

    def extend(self, classes: Iterable[type[BaseModel]]) -> EventCatalog:
        """Add ``classes``; returns the catalog (for chaining at composition)."""
        for cls in classes:
            self.add(cls)
        return self
