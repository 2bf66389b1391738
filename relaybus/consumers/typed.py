"""Handlers that take an event class: the message read into it before the call.

A handler whose first parameter is annotated with an ``@event`` class (or a union of
them) receives a validated instance instead of the ``Incoming``; the class is chosen by
the message's ``type`` header, the payload is lifted from its ``schema_version`` by the
catalog's upcasters and then validated. A refusal is ``InvalidMessage`` with the
catalog's reason (``schema``, ``unknown-version``): dead-lettered at once, no retries.
A typed handler may take the ``Incoming`` as a third parameter (for its id, headers
or attempt). Untyped handlers (``Incoming``) are left as they are.
"""

from __future__ import annotations

import inspect
import logging
import types
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.consumers.incoming import Incoming, InvalidMessage
from relaybus.events import EventCatalog, EventRefused, is_event_class, parse_version, spec_of

log = logging.getLogger(__name__)

HandlerFunc = Callable[[Incoming, AsyncSession | None], Awaitable[None]]


def event_classes(func: Callable[..., Any]) -> list[type[BaseModel]]:
    """The event classes ``func``'s first parameter is annotated with (one, or the
    members of a union), or ``[]`` for an untyped handler. A union mixing event
    classes with other types is a ``TypeError``: which one a message becomes would be
    a guess."""
    parameters = list(inspect.signature(func).parameters.values())
    if not parameters:
        return []
    annotation = _annotation(func, parameters[0])
    if annotation is None:
        return []
    members = (
        list(typing.get_args(annotation))
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else [annotation]
    )
    declared = [member for member in members if is_event_class(member)]
    if not declared:
        return []
    if len(declared) != len(members):
        raise TypeError(f"{func.__name__}: a union of event classes may hold event classes only")
    return declared


def _annotation(func: Callable[..., Any], parameter: inspect.Parameter) -> Any:
    """The first parameter's annotation, resolved against the handler's module; None
    if absent or not resolvable (a name imported only for type checkers cannot be an
    event class: one must exist at run time to validate anything). Like pydantic and
    FastAPI, an event class in a string annotation must be a name of that module."""
    if parameter.annotation is inspect.Parameter.empty:
        return None
    try:
        return typing.get_type_hints(func).get(parameter.name)
    except Exception:  # an unresolvable annotation: an untyped handler
        log.debug("%s: annotations not resolved; untyped", func.__name__, exc_info=True)
        return None


def typed(
    func: Callable[..., Awaitable[None]],
    classes: list[type[BaseModel]],
    catalog: EventCatalog,
) -> HandlerFunc:
    """``func`` as a handler of ``Incoming``: each message read into the class of its
    ``type`` through ``catalog`` (which gets the classes), then passed on."""
    by_type: dict[str, type[BaseModel]] = {}
    for cls in classes:
        spec = spec_of(cls)
        if spec.type in by_type:
            raise TypeError(f"{func.__name__}: two classes of event type {spec.type!r}")
        by_type[spec.type] = catalog.add(cls)

    # A third parameter gets the delivery itself (its id, headers, attempt).
    wants_message = len(inspect.signature(func).parameters) >= 3

    async def handle(message: Incoming, session: AsyncSession | None) -> None:
        cls = by_type.get(message.type)
        if cls is None:  # ``types`` keeps others out; a hand-built Handler may not
            raise InvalidMessage("unknown-type", f"type {message.type[:255]!r} is not handled here")
        try:
            version = parse_version(message.headers.get("schema_version"))
            instance = catalog.read(cls, version, message.payload)
        except EventRefused as refused:
            raise InvalidMessage(refused.reason, refused.detail) from None
        if wants_message:
            await func(instance, session, message)
        else:
            await func(instance, session)

    handle.__name__ = func.__name__
    handle.__qualname__ = func.__qualname__
    handle.__doc__ = func.__doc__
    return handle
