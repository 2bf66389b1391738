from __future__ import annotations

import itertools
import time
from uuid import UUID

from relaybus.ids import uuid7


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
