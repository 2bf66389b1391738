from __future__ import annotations

import itertools
import time
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from relaybus.ids import uuid7
from relaybus.shop.contract import step_id, step_id_text
from relaybus.streams.envelope import EnvelopeTemplate, envelope


def test_uuid7_has_version_7_and_rfc_variant() -> None:
    u = uuid7()
    assert u.version == 7
    assert u.variant == "specified in RFC 4122"


def test_uuid7_embeds_current_unix_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    u = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= u.int >> 80 <= after


def test_uuid7_strictly_increasing_within_a_process() -> None:
    ids = [uuid7() for _ in range(50_000)]
    assert all(a.int < b.int for a, b in itertools.pairwise(ids))
    assert len({str(i) for i in ids}) == len(ids)
    assert isinstance(ids[0], UUID)


@given(
    order=st.one_of(st.integers(min_value=0, max_value=2**63), st.text(max_size=40)),
    step=st.text(max_size=40),
)
def test_step_id_text_is_the_text_of_step_id(order: int | str, step: str) -> None:
    assert step_id_text(order, step) == str(step_id(order, step))


@given(
    kind=st.text(min_size=1, max_size=20),
    key=st.text(max_size=20),
    message_id=st.uuids().map(str),
    causation=st.one_of(st.none(), st.uuids().map(str)),
)
def test_an_envelope_template_gives_the_envelope(
    kind: str, key: str, message_id: str, causation: str | None
) -> None:
    at = "2026-12-01T00:00:00.000000Z"
    template = EnvelopeTemplate(kind, "order", at)
    assert template.headers(key, message_id, causation) == envelope(
        kind, key, message_id, causation, "order", at
    )
