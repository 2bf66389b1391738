"""The trust boundary's pure parts: header limits, retry-header bounds, the failure
path's destinations and size caps, outbox validation, replay plans, terminal text.
The same behaviours run end to end on the real brokers in
tests/integration/test_trust_boundary.py."""

from __future__ import annotations

import io
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table

from relaybus import headers as rh
from relaybus.backoff import Backoff
from relaybus.consumers import failure
from relaybus.consumers.dlq_admin import DeadLetter, ReplayPlan
from relaybus.consumers.failure import CopyKind, FailurePath, Outcome, Verdict, describe
from relaybus.consumers.incoming import (
    InvalidMessage,
    WireLimits,
    decode,
    read_headers,
    retry_due,
    strict_int,
)
from relaybus.consumers.naming import dlq_name, retry_name, source_of_dlq
from relaybus.consumers.policy import RetryPolicy
from relaybus.outbox.writer import Outbox, OutboxError
from relaybus.terminal import plain

ID = str(uuid.uuid4())
ENVELOPE = {"id": ID, "type": "t"}


@pytest.mark.parametrize(
    ("pairs", "reason"),
    [
        ([(f"h{i}", b"v") for i in range(5)], "too-many-headers"),
        ([("big", b"v" * 200)], "headers-too-large"),
        ([("note", b"\xff")], "bad-header"),
        ([(b"\xffname", b"v")], "bad-header"),
        ([("note", b"a"), ("note", b"b")], "duplicate-header"),
    ],
)
def test_read_headers_refuses_with_a_reason(pairs: list[tuple[Any, bytes]], reason: str) -> None:
    with pytest.raises(InvalidMessage) as err:
        read_headers(pairs, WireLimits(max_headers=4, max_header_bytes=100))
    assert err.value.reason == reason


def test_read_headers_turns_amqp_values_into_text() -> None:
    headers = read_headers([("n", 3), ("b", True), ("t", {"k": [1]})], WireLimits())
    assert headers == {"n": "3", "b": "True", "t": '{"k": [1]}'}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("12", 12), ("-1", None), ("9" * 30, None), ("1e3", None), ("٣", None), (None, None)],
)
def test_strict_int_accepts_only_plain_numbers_in_range(
    value: str | None, expected: int | None
) -> None:
    assert strict_int(value, low=0, high=1000) == expected


@pytest.mark.parametrize(
    ("value", "wait"),
    [("110", 10.0), ("99999999999", 30.0), ("nan", 0.0), ("inf", 0.0), ("x", 0.0), ("50", 0.0)],
)
def test_retry_due_is_bounded(value: str, wait: float) -> None:
    assert retry_due({rh.RETRY_AT: value}, now=100.0, max_wait=30.0) == wait


def test_backoffs_never_overflow() -> None:
    backoff = Backoff(initial=0.1, maximum=10.0)
    backoff.attempts = 5000
    assert 5.0 <= backoff.next_delay() <= 10.0
    assert RetryPolicy(max_delay=60.0).delay(5000) <= 60.0


def test_naming_rule() -> None:
    assert retry_name("orders", 2) == "orders.retry.2"
    assert dlq_name("orders") == "orders.dlq"
    assert source_of_dlq("orders.dlq") == "orders"
    with pytest.raises(ValueError, match="tiers start at 1"):
        retry_name("orders", 0)
    with pytest.raises(ValueError, match="not a dead-letter queue"):
        source_of_dlq("orders")


def _message(attempt: int, raw: bytes = b"{}") -> Any:
    return decode(raw, ENVELOPE, key="k", source="orders", partition=1, offset=7, attempt=attempt)


def test_failure_path_never_routes_to_tier_zero_or_past_the_last_tier() -> None:
    path = FailurePath("c", "orders", tiers=2, limits=WireLimits())
    retry = Verdict(Outcome.RETRY, error=RuntimeError("x"), delay=1.0)
    first = path.decide(retry, _message(1))
    assert first is not None
    assert (first.kind, first.destination) == (CopyKind.RETRY, "orders.retry.1")
    assert first.headers[rh.ATTEMPTS] == "1"
    assert first.headers[rh.ORIGINAL_TOPIC] == "orders"
    beyond = path.decide(retry, _message(3))  # no tier 3: dead, not an invented tier
    assert beyond is not None
    assert (beyond.kind, beyond.destination) == (CopyKind.DEAD_LETTER, "orders.dlq")
    assert path.decide(Verdict(Outcome.DONE), _message(1)) is None


def test_dead_letter_copies_fit_the_budget_then_become_stubs() -> None:
    limits = WireLimits(max_bytes=1000, max_header_bytes=1000)
    path = FailurePath("c", "orders", tiers=1, limits=limits)
    huge = b'{"s": "' + b"x" * 100_000 + b'"}'
    copy = path.invalid(
        huge, ENVELOPE, InvalidMessage("oversize", "big"), attempt=1, partition=0, offset=5
    )
    assert copy.body == b""
    assert copy.headers["id"] == ID
    assert copy.headers[rh.DLQ_REASON] == "oversize"
    assert "orders/0/5" in copy.headers[rh.BODY_DROPPED]
    assert copy.size() <= path.copy_budget


def test_exception_texts_mask_url_passwords() -> None:
    _, message, stack = describe(ConnectionError("cannot reach amqp://app:s3cret@rabbit:5672/"))
    assert "s3cret" not in message
    assert "s3cret" not in stack
    assert "amqp://app:***@rabbit" in message


@pytest.mark.parametrize(
    "text",
    ["a." * 500_000, "x://" + "a:" * 500_000, "amqp://u:" + "p" * 1_000_000, "é" * 1_000_000],
)
def test_redaction_reads_a_bounded_prefix_of_any_text(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exception text cannot stall a worker (issue 31 §6): 1 MB of adversarial text is
    cut before the pattern runs, and the pattern has no unbounded repetition, so each
    match attempt costs a constant (the time of it: bench note, not asserted here)."""
    seen: list[int] = []
    pattern = failure._CREDENTIALS
    monkeypatch.setattr(
        failure, "_CREDENTIALS", SimpleNamespace(sub=lambda r, t: seen.append(len(t)) or t)
    )
    _, message, stack = describe(ValueError(text))
    assert len(message) <= failure.MAX_EXCEPTION_MESSAGE
    assert len(stack) <= failure.MAX_STACKTRACE
    assert seen
    assert max(seen) <= failure.MAX_STACKTRACE + failure._REDACT_MARGIN
    quantifiers = pattern.pattern.replace("+.-", "")  # "+" inside the scheme's class
    assert "*" not in quantifiers
    assert "+" not in quantifiers


def test_a_credential_across_the_cut_is_still_masked() -> None:
    secret = "s3cret"
    text = "x" * (failure.MAX_EXCEPTION_MESSAGE - 10) + f" postgresql://bob:{secret}@db/x"
    assert secret not in describe(ValueError(text))[1]
    stack_text = f"postgresql://bob:{secret}@db/x " + "y" * (failure.MAX_STACKTRACE - 20)
    assert secret not in describe(ValueError(stack_text))[2]


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"headers": {"x-attempts": "1"}}, "reserved"),
        ({"headers": {"x-original-topic": "t"}}, "reserved"),
        ({"headers": {"id": "1"}}, "set by relaybus"),
        ({"headers": {"n": "x" * 20_000}}, "at most"),
        ({"aggregate_type": "has space"}, "Kafka topic"),
        ({"aggregate_type": "a" * 240}, "topic name"),
        ({"type": "é" * 200}, "UTF-8 bytes"),
        ({"aggregate_id": "a\x00b"}, "NUL"),
    ],
)
async def test_outbox_refuses_what_the_relay_could_not_encode(
    kwargs: dict[str, Any], problem: str
) -> None:
    class NoWrites:
        async def execute(self, *_args: object) -> None:
            raise AssertionError("nothing may be written")

    event: dict[str, Any] = {
        "aggregate_type": "order",
        "aggregate_id": "o-1",
        "type": "order.created",
        "payload": {"n": 1},
        **kwargs,
    }
    with pytest.raises(OutboxError, match=problem):
        await Outbox().enqueue(NoWrites(), **event)  # type: ignore[arg-type]


def _letter(id_: str, original: str, position: str) -> DeadLetter:
    headers = {"id": id_, rh.ORIGINAL_TOPIC: original} if original else {"id": id_}
    return DeadLetter.of("k", b"{}", headers, position)


def test_replay_plan_targets_the_dlq_source_and_refuses_other_origins() -> None:
    plan = ReplayPlan("orders.dlq", "orders", lambda _d: True)
    plan.consider(_letter("a", "orders", "0:1"))
    plan.consider(_letter("b", "payments", "0:2"))  # a forged or foreign origin
    plan.consider(_letter("c", "", "0:3"))
    assert plan.target == "orders"
    assert plan.accepted == [("0:1", "a"), ("0:3", "c")]
    assert plan.refused == [("0:2", "b", "payments")]
    assert not plan.take(_letter("b", "payments", "0:2"))
    assert plan.take(_letter("a", "orders", "0:1"))
    assert not plan.take(_letter("a", "orders", "0:1"))  # each planned letter once


def test_replay_send_pass_rechecks_origin_not_only_the_ref() -> None:
    """On RabbitMQ a letter's ref is its id, which its writer chose (issue 31 §5)."""
    plan = ReplayPlan("orders.dlq", "orders", lambda _d: True)
    plan.consider(_letter("a", "payments", ""))  # forged twin: same id, other origin
    plan.consider(_letter("a", "orders", ""))
    assert plan.accepted == [("a", "a")]
    assert not plan.take(_letter("a", "payments", ""))
    assert plan.take(_letter("a", "orders", ""))


def test_wire_values_print_as_text_not_markup() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=True, color_system="truecolor")
    table = Table()
    table.add_column("v")
    table.add_row(plain("[/x] [link=http://evil]click[/link] \x1b[31mred"))
    console.print(table)
    printed = out.getvalue()
    assert "[/x] [link=http://evil]click[/link]" in printed
    assert "\\x1b[31mred" in printed
    assert "\x1b]8;" not in printed  # no hyperlink escape was rendered


def test_every_reserved_header_starts_with_x_dash() -> None:
    # ``is_reserved`` answers False at once for names not starting with "x": that is
    # only right while every reserved name and prefix starts with "x-".
    from relaybus.headers import RESERVED_NAMES, RESERVED_PREFIXES, is_reserved

    assert all(name.startswith("x-") for name in (*RESERVED_NAMES, *RESERVED_PREFIXES))
    assert is_reserved("X-DLQ-Reason")
    assert not is_reserved("type")
