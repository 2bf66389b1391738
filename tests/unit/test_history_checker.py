"""The fault runs' history checker catches each anomaly it names, and passes a history
whose only blemish is allowed (duplicate deliveries deduped by the inbox)."""

from __future__ import annotations

from tests.chaos.history import History, OrderViolation, Seen, Sent, check

CONSUMERS = ("orders", "audit")


def clean() -> History:
    """Two keys, three messages each, published, delivered and applied once by both."""
    sent = [Sent(f"{k}{n}", k, n) for k in "ab" for n in (1, 2, 3)]
    ids = [s.message_id for s in sent]
    return History(
        consumers=CONSUMERS,
        sent=sent,
        published=[Seen(m) for m in ids],
        deliveries=[Seen(m, c) for c in CONSUMERS for m in ids],
        effects=[Seen(m, c) for c in CONSUMERS for m in ids],
    )


def test_a_clean_history_passes() -> None:
    report = check(clean())
    assert report.ok
    assert set(report.figures().values()) == {0}


def test_duplicate_deliveries_are_counted_but_allowed() -> None:
    h = clean()
    h.deliveries += [Seen("a1", "orders"), Seen("a1", "orders"), Seen("b3", "audit")]
    h.published.append(Seen("a2"))  # the relay republished after a crash
    report = check(h)
    assert report.ok
    assert report.duplicate_deliveries == 3


def test_a_committed_message_never_applied_is_lost() -> None:
    h = clean()
    h.effects.remove(Seen("b2", "audit"))
    report = check(h)
    assert not report.ok
    assert report.lost == {"orders": [], "audit": ["b2"]}


def test_an_effect_applied_twice_is_caught() -> None:
    h = clean()
    h.effects.append(Seen("a3", "orders"))
    report = check(h)
    assert not report.ok
    assert report.duplicate_effects["orders"] == ["a3"]


def test_a_message_never_sent_is_unexpected() -> None:
    h = clean()
    h.deliveries.append(Seen("ghost", "orders"))
    report = check(h)
    assert not report.ok
    assert report.unexpected == ["ghost"]


def test_per_key_order_is_checked_at_publication_and_application() -> None:
    h = clean()
    h.published = [Seen(m) for m in ("a2", "a1", "a3", "b1", "b2", "b3")]
    h.effects = [e for e in h.effects if not (e.consumer == "audit" and e.message_id == "b1")]
    h.effects.append(Seen("b1", "audit"))  # applied after b2 and b3
    report = check(h)
    assert not report.ok
    assert report.order_violations == [
        OrderViolation("published", "a", 2, 1),
        OrderViolation("effects of audit", "b", 3, 1),
    ]


def test_an_older_message_redelivered_after_a_newer_one_is_not_a_reordering() -> None:
    h = clean()
    h.published += [Seen("a1"), Seen("b2")]
    assert check(h).ok


def test_rows_left_in_the_outbox_after_the_drain_are_caught() -> None:
    h = clean()
    h.left_in_outbox = {"a3"}
    report = check(h)
    assert not report.ok
    assert report.left_in_outbox == ["a3"]


def test_the_dead_letter_queue_must_hold_exactly_the_injected_poison() -> None:
    h = clean()
    h.poison = {"bad1", "bad2"}
    h.deliveries += [Seen("bad1", "orders"), Seen("bad2", "orders")]
    h.dead_letters = ["bad1", "a2"]
    report = check(h)
    assert not report.ok
    assert report.poison_not_dead_lettered == ["bad2"]
    assert report.dead_lettered_not_poison == ["a2"]
    assert report.unexpected == []  # injected ids are known, not unexpected


def test_poison_that_was_applied_is_caught() -> None:
    h = clean()
    h.sent.append(Sent("bad", "a", 4))  # written through the outbox, undecodable later
    h.poison = {"bad"}
    h.dead_letters = ["bad"]
    h.effects.append(Seen("bad", "orders"))
    report = check(h)
    assert not report.ok
    assert report.poison_applied == ["bad"]
    assert report.lost == {"orders": [], "audit": []}  # poison is not owed to anyone


def test_with_the_whole_log_a_committed_message_missing_from_it_is_unpublished() -> None:
    h = clean()
    h.consumers, h.deliveries, h.effects = (), [], []
    h.published = [p for p in h.published if p.message_id != "b2"] + [Seen("a1")]
    assert check(h).ok  # a partial log proves nothing missing
    h.complete_log = True
    report = check(h)
    assert not report.ok
    assert report.unpublished == ["b2"]
    assert report.duplicates_published == 1
