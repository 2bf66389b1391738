"""Event classes, versions and upcasters (``relaybus.events``), without services."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from relaybus.events import (
    EventCatalog,
    EventRefused,
    event,
    is_event_class,
    parse_version,
    spec_of,
)


@event("thing.made", version=1, aggregate_type="thing", key="thing_id")
class ThingV1(BaseModel):
    thing_id: str
    size: int


@event("thing.made", version=2, aggregate_type="thing", key="thing_id")
class ThingV2(BaseModel):
    thing_id: str
    size: int
    colour: str


@event("thing.made", version=3, aggregate_type="thing", key="thing_id")
class ThingV3(BaseModel):
    thing_id: str
    size_mm: int
    colour: str


def catalog() -> EventCatalog:
    events = EventCatalog(ThingV1, ThingV2, ThingV3)

    @events.upcaster("thing.made", from_version=1)
    def add_colour(v1: dict[str, Any]) -> dict[str, Any]:
        return {**v1, "colour": "grey"}

    @events.upcaster("thing.made", from_version=2)
    def millimetres(v2: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in v2.items() if k != "size"}
        return {**out, "size_mm": v2["size"] * 10}

    return events


def test_the_decorator_marks_the_class_and_refuses_what_is_not_a_model() -> None:
    assert spec_of(ThingV2).type == "thing.made"
    assert spec_of(ThingV2(thing_id="a", size=1, colour="red")).version == 2
    assert is_event_class(ThingV1)
    assert not is_event_class(BaseModel)
    with pytest.raises(TypeError):
        event("x")(dict)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="version"):
        event("x", version=0)
    with pytest.raises(ValueError, match="not a field"):

        @event("x", key="missing")
        class Keyed(BaseModel):
            present: str

    class Sub(ThingV1):
        pass

    with pytest.raises(TypeError, match="not declared"):
        spec_of(Sub)  # a subclass declares itself, it does not inherit the type


def test_an_old_version_is_upcast_through_every_step_then_validated() -> None:
    read = catalog().read(ThingV3, 1, {"thing_id": "a", "size": 4})
    assert read == ThingV3(thing_id="a", size_mm=40, colour="grey")
    assert catalog().read(ThingV3, 3, {"thing_id": "a", "size_mm": 1, "colour": "red"}).colour == (
        "red"
    )


def test_a_newer_version_or_a_broken_chain_is_unknown_version() -> None:
    with pytest.raises(EventRefused) as newer:
        catalog().read(ThingV2, 3, {"thing_id": "a", "size_mm": 1, "colour": "red"})
    assert newer.value.reason == "unknown-version"
    gap = EventCatalog(ThingV1, ThingV3)
    with pytest.raises(EventRefused) as missing:
        gap.read(ThingV3, 1, {"thing_id": "a", "size": 1})
    assert missing.value.reason == "unknown-version"
    assert "v1 has no upcaster" in missing.value.detail


def test_a_payload_that_fails_names_locations_not_values() -> None:
    secret = "4111-1111-1111-1111"
    with pytest.raises(EventRefused) as refused:
        catalog().read(ThingV3, 3, {"thing_id": secret, "size_mm": secret, "colour": 7})
    assert refused.value.reason == "schema"
    assert "size_mm: int_parsing" in refused.value.detail
    assert "colour: string_type" in refused.value.detail
    assert secret not in str(refused.value)


def test_an_upcaster_that_raises_refuses_the_record() -> None:
    with pytest.raises(EventRefused) as refused:  # v2 without "size": the lift raises
        catalog().read(ThingV3, 2, {"thing_id": "a", "colour": "red"})
    assert refused.value.reason == "schema"
    assert "KeyError" in refused.value.detail


@pytest.mark.parametrize("header", ["0", "-1", "1.0", "v2", "9999999999", " 1", "²"])
def test_a_version_header_that_is_not_a_positive_integer_is_unknown_version(header: str) -> None:
    with pytest.raises(EventRefused) as refused:
        parse_version(header)
    assert refused.value.reason == "unknown-version"


def test_no_version_header_means_version_1() -> None:
    assert parse_version(None) == parse_version("") == 1
    assert parse_version("12") == 12


def test_a_class_declared_twice_for_one_version_is_refused() -> None:
    @event("thing.made", version=1)
    class Other(BaseModel):
        pass

    with pytest.raises(ValueError, match="declared twice"):
        EventCatalog(ThingV1, Other)
    events = EventCatalog(ThingV1)
    assert events.add(ThingV1) is ThingV1  # the same class again is harmless


# Property: a chain of n upcasters, each appending its step, applies every step once and
# in order, from any start version to any later target.
# Drawing inside the test (st.data) is slow on a loaded machine: no time health check.
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    length=st.integers(min_value=1, max_value=12),
    data=st.data(),
)
def test_a_chain_of_upcasters_applies_each_step_once_in_order(length: int, data: Any) -> None:
    start = data.draw(st.integers(min_value=1, max_value=length))
    target = data.draw(st.integers(min_value=start, max_value=length))
    events = EventCatalog()
    for version in range(1, length):

        def lift(payload: dict[str, Any], step: int = version) -> dict[str, Any]:
            return {**payload, "steps": [*payload["steps"], step]}

        events.upcaster("chain", from_version=version)(lift)
    lifted = events.upcast("chain", {"steps": []}, from_version=start, to_version=target)
    assert lifted == {"steps": list(range(start, target))}


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    versions=st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=9, unique=True),
    start=st.integers(min_value=1, max_value=10),
    target=st.integers(min_value=1, max_value=10),
)
def test_upcasting_succeeds_exactly_when_every_link_exists(
    versions: list[int], start: int, target: int
) -> None:
    events = EventCatalog()
    for version in versions:
        events.upcaster("gappy", from_version=version)(lambda p: p)
    possible = start <= target and all(v in versions for v in range(start, target))
    if possible:
        assert events.upcast("gappy", {}, from_version=start, to_version=target) == {}
    else:
        with pytest.raises(EventRefused) as refused:
            events.upcast("gappy", {}, from_version=start, to_version=target)
        assert refused.value.reason == "unknown-version"
