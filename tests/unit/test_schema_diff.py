"""``relaybus.schema_diff``: a table of schema changes, each classified as breaking or
additive, on documents that ``relaybus asyncapi`` generates from event classes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, create_model

from relaybus.consumers.asyncapi import System, document
from relaybus.events import EventCatalog, event
from relaybus.schema_diff import Change, DocumentError, compare
from relaybus.settings import Settings

TYPE = "thing.made"


def model(version: int = 1, aggregate: str = "thing", forbid: bool = False, **fields: Any) -> Any:
    """An event class of ``TYPE`` with ``fields`` (``name=(type, default or ...)``)."""
    base = (
        type("Base", (BaseModel,), {"model_config": ConfigDict(extra="forbid")})
        if forbid
        else (BaseModel)
    )
    cls = create_model(f"Thing{version}", __base__=base, **fields)
    return event(TYPE, version=version, aggregate_type=aggregate)(cls)


def doc(*classes: Any, upcasters: tuple[int, ...] = ()) -> dict[str, Any]:
    catalog = EventCatalog(*classes)
    for version in upcasters:
        catalog.upcaster(TYPE, from_version=version)(lambda payload: payload)
    return document(System("t", "1", catalog), Settings())


class Line(BaseModel):
    sku: str
    quantity: int


class TextLine(BaseModel):
    sku: str
    quantity: str


BASE = {"thing_id": (str, ...), "size": (int, ...)}


@dataclass(frozen=True)
class Case:
    name: str
    old: Callable[[], dict[str, Any]]
    new: Callable[[], dict[str, Any]]
    breaking: bool
    what: str  # a phrase the change's description contains


CASES = [
    Case(
        "optional field added",
        lambda: doc(model(**BASE)),
        lambda: doc(model(**BASE, note=(str, ""))),
        False,
        "optional field added",
    ),
    Case(
        "required field added",
        lambda: doc(model(**BASE)),
        lambda: doc(model(**BASE, note=(str, ...))),
        True,
        "required field added",
    ),
    Case(
        "field removed",
        lambda: doc(model(**BASE)),
        lambda: doc(model(thing_id=(str, ...))),
        True,
        "field removed",
    ),
    Case(
        "type changed",
        lambda: doc(model(**BASE)),
        lambda: doc(model(thing_id=(str, ...), size=(str, ...))),
        True,
        "type changed",
    ),
    Case(
        "type widened with null",
        lambda: doc(model(**BASE)),
        lambda: doc(model(thing_id=(str, ...), size=(int | None, ...))),
        False,
        "type widened",
    ),
    Case(
        "type narrowed from nullable",
        lambda: doc(model(thing_id=(str, ...), size=(int | None, None))),
        lambda: doc(model(thing_id=(str, ...), size=(int, 0))),
        True,
        "type narrowed",
    ),
    Case(
        "field made required",
        lambda: doc(model(thing_id=(str, ...), size=(int, 0))),
        lambda: doc(model(**BASE)),
        True,
        "field made required",
    ),
    Case(
        "field made optional",
        lambda: doc(model(**BASE)),
        lambda: doc(model(thing_id=(str, ...), size=(int, 0))),
        False,
        "field made optional",
    ),
    Case(
        "maxLength lowered",
        lambda: doc(model(thing_id=(str, Field(max_length=64)), size=(int, ...))),
        lambda: doc(model(thing_id=(str, Field(max_length=8)), size=(int, ...))),
        True,
        "maxLength 64 -> 8",
    ),
    Case(
        "maxLength raised",
        lambda: doc(model(thing_id=(str, Field(max_length=8)), size=(int, ...))),
        lambda: doc(model(thing_id=(str, Field(max_length=64)), size=(int, ...))),
        False,
        "maxLength 8 -> 64",
    ),
    Case(
        "minimum raised",
        lambda: doc(model(thing_id=(str, ...), size=(int, Field(ge=0)))),
        lambda: doc(model(thing_id=(str, ...), size=(int, Field(ge=5)))),
        True,
        "minimum 0 -> 5",
    ),
    Case(
        "bound added",
        lambda: doc(model(**BASE)),
        lambda: doc(model(thing_id=(str, ...), size=(int, Field(le=100)))),
        True,
        "maximum 100 added",
    ),
    Case(
        "enum value removed",
        lambda: doc(model(thing_id=(str, ...), kind=(Literal["a", "b"], ...))),
        lambda: doc(model(thing_id=(str, ...), kind=(Literal["a", "c"], ...))),
        True,
        "enum values removed",
    ),
    Case(
        "enum value added",
        lambda: doc(model(thing_id=(str, ...), kind=(Literal["a", "b"], ...))),
        lambda: doc(model(thing_id=(str, ...), kind=(Literal["a", "b", "c"], ...))),
        False,
        "enum values added",
    ),
    Case(
        "pattern added",
        lambda: doc(model(**BASE)),
        lambda: doc(model(thing_id=(str, Field(pattern="^t")), size=(int, ...))),
        True,
        "pattern None -> '^t'",
    ),
    Case(
        "unknown fields refused",
        lambda: doc(model(**BASE)),
        lambda: doc(model(forbid=True, **BASE)),
        True,
        "additionalProperties: false added",
    ),
    Case(
        "nested field type changed",
        lambda: doc(model(thing_id=(str, ...), lines=(list[Line], ...))),
        lambda: doc(model(thing_id=(str, ...), lines=(list[TextLine], ...))),
        True,
        "type changed",
    ),
    Case(
        "version added with an upcaster",
        lambda: doc(model(**BASE)),
        lambda: doc(model(**BASE), model(2, **BASE, note=(str, ...)), upcasters=(1,)),
        False,
        "version added",
    ),
    Case(
        "version added without an upcaster",
        lambda: doc(model(**BASE)),
        lambda: doc(model(**BASE), model(2, **BASE, note=(str, ...))),
        True,
        "version added without an upcaster",
    ),
    Case(
        "version retired behind an upcaster",
        lambda: doc(model(**BASE), model(2, **BASE, note=(str, ...)), upcasters=(1,)),
        lambda: doc(model(2, **BASE, note=(str, ...)), upcasters=(1,)),
        False,
        "version retired",
    ),
    Case(
        "version dropped without an upcaster",
        lambda: doc(model(**BASE), model(2, **BASE, note=(str, ...)), upcasters=(1,)),
        lambda: doc(model(2, **BASE, note=(str, ...))),
        True,
        "version dropped without an upcaster",
    ),
    Case(
        "channel removed",
        lambda: doc(model(**BASE)),
        lambda: doc(model(aggregate="gadget", **BASE)),
        True,
        "channel removed",
    ),
    Case(
        "message type removed",
        lambda: doc(model(**BASE)),
        lambda: doc(),
        True,
        "message type removed",
    ),
    Case(
        "message type added",
        lambda: doc(),
        lambda: doc(model(**BASE)),
        False,
        "message type added",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_change_is_classified(case: Case) -> None:
    changes = compare(case.old(), case.new())
    matching = [change for change in changes if case.what in change.what]
    assert matching, changes
    assert {change.breaking for change in matching} == {case.breaking}, matching
    # The verdict of the whole comparison is the case's: nothing else breaks by accident.
    assert any(change.breaking for change in changes) is case.breaking, changes


def test_an_unchanged_document_has_no_changes() -> None:
    assert compare(doc(model(**BASE)), doc(model(**BASE))) == []


def test_what_is_not_an_asyncapi_3_document_is_a_clear_error() -> None:
    with pytest.raises(DocumentError, match="old document is not AsyncAPI 3"):
        compare({"asyncapi": "2.6.0"}, doc())
    assert isinstance(Change("w", "x", True), Change)
