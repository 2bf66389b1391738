"""A run's history and the checker that judges it (Jepsen-style, for relaybus's promises).

A fault run records what happened at each stage, then ``check`` compares them:

- ``sent``: outbox rows whose transaction committed (id, key, the key's sequence:
  1, 2, 3, … in commit order of that key);
- ``published``: records as read back from the broker, in log order per key;
- ``deliveries``: what each consumer's handler was given (duplicates are allowed:
  delivery is at least once);
- ``effects``: what each consumer applied, in the order applied (the inbox must make
  it exactly once);
- ``left_in_outbox``: ids still in the outbox after the final drain;
- ``dead_letters``: ids found in the dead-letter queues, and ``poison``: the ids the
  run injected as bad input (they must land there, and nothing else may).

The promises checked: nothing committed is lost (every non-poison id applied by every
consumer), nothing applied that was never sent, no effect twice, per-key order of
first publication and of application, an empty outbox after the drain, and the DLQ
holding exactly the injected poison (none of it applied). Duplicate deliveries are
counted, not failed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sent:
    """A committed outbox row: its message id, key, and 1-based sequence within the key."""

    message_id: str
    key: str
    seq: int


@dataclass(frozen=True)
class Seen:
    """A message observed at a stage (published record, delivery or applied effect);
    ``consumer`` is empty for the broker's log."""

    message_id: str
    consumer: str = ""


@dataclass(frozen=True)
class OrderViolation:
    """At ``stage`` (``published`` or a consumer's effects), ``key``'s message with
    sequence ``later_seq`` came first, then ``earlier_seq``."""

    stage: str
    key: str
    later_seq: int
    earlier_seq: int


@dataclass
class History:
    """What one run recorded (see the module docstring)."""

    consumers: Sequence[str]
    sent: list[Sent] = field(default_factory=list)
    published: list[Seen] = field(default_factory=list)
    deliveries: list[Seen] = field(default_factory=list)
    effects: list[Seen] = field(default_factory=list)
    left_in_outbox: set[str] = field(default_factory=set)
    dead_letters: list[str] = field(default_factory=list)
    poison: set[str] = field(default_factory=set)
    # Whether ``published`` is the whole broker log of the run (then every committed
    # non-poison id must be in it: a run without consumers checks loss there).
    complete_log: bool = False


@dataclass(frozen=True)
class Report:
    """The anomalies of a history. ``ok`` when every promise held; ``figures`` are for
    printing (duplicates delivered are allowed and only counted)."""

    lost: dict[str, list[str]]
    unexpected: list[str]
    duplicate_effects: dict[str, list[str]]
    order_violations: list[OrderViolation]
    left_in_outbox: list[str]
    poison_not_dead_lettered: list[str]
    dead_lettered_not_poison: list[str]
    poison_applied: list[str]
    duplicate_deliveries: int
    unpublished: list[str] = field(default_factory=list)
    duplicates_published: int = 0

    @property
    def ok(self) -> bool:
        return not (
            any(self.lost.values())
            or self.unexpected
            or any(self.duplicate_effects.values())
            or self.order_violations
            or self.left_in_outbox
            or self.poison_not_dead_lettered
            or self.dead_lettered_not_poison
            or self.poison_applied
            or self.unpublished
        )

    def figures(self) -> dict[str, int]:
        return {
            "lost": sum(len(v) for v in self.lost.values()),
            "unexpected": len(self.unexpected),
            "duplicate effects": sum(len(v) for v in self.duplicate_effects.values()),
            "order violations": len(self.order_violations),
            "left in outbox": len(self.left_in_outbox),
            "poison not dead-lettered": len(self.poison_not_dead_lettered),
            "dead-lettered, not poison": len(self.dead_lettered_not_poison),
            "poison applied": len(self.poison_applied),
            "duplicate deliveries": self.duplicate_deliveries,
            "not published": len(self.unpublished),
            "duplicates published": self.duplicates_published,
        }


def _order_violations(
    stage: str, seen: Iterable[Seen], by_id: dict[str, Sent]
) -> list[OrderViolation]:
    """Per key, the first sightings must come in sequence order (a redelivery of an
    older message after a newer one is a duplicate, not a reordering)."""
    highest: dict[str, int] = {}
    first_seen: set[str] = set()
    out = []
    for s in seen:
        sent = by_id.get(s.message_id)
        if sent is None or s.message_id in first_seen:
            continue
        first_seen.add(s.message_id)
        top = highest.get(sent.key, 0)
        if sent.seq < top:
            out.append(OrderViolation(stage, sent.key, top, sent.seq))
        else:
            highest[sent.key] = sent.seq
    return out


def check(history: History) -> Report:
    """Judge ``history`` against relaybus's promises (see the module docstring)."""
    by_id = {s.message_id: s for s in history.sent}
    known = set(by_id) | history.poison
    wanted = set(by_id) - history.poison
    applied: dict[str, Counter[str]] = defaultdict(Counter)
    for e in history.effects:
        applied[e.consumer][e.message_id] += 1
    lost = {c: sorted(wanted - set(applied[c])) for c in history.consumers}
    duplicate_effects = {
        c: sorted(m for m, n in applied[c].items() if n > 1) for c in history.consumers
    }
    observed = history.published + history.deliveries + history.effects
    unexpected = sorted({s.message_id for s in observed if s.message_id not in known})
    violations = _order_violations("published", history.published, by_id)
    per_consumer: dict[str, list[Seen]] = defaultdict(list)
    for e in history.effects:
        per_consumer[e.consumer].append(e)
    for consumer in history.consumers:
        violations += _order_violations(f"effects of {consumer}", per_consumer[consumer], by_id)
    delivered = Counter((d.consumer, d.message_id) for d in history.deliveries)
    in_log = Counter(p.message_id for p in history.published)
    dead = set(history.dead_letters)
    return Report(
        lost=lost,
        unexpected=unexpected,
        duplicate_effects=duplicate_effects,
        order_violations=violations,
        left_in_outbox=sorted(history.left_in_outbox),
        poison_not_dead_lettered=sorted(history.poison - dead),
        dead_lettered_not_poison=sorted(dead - history.poison),
        poison_applied=sorted({e.message_id for e in history.effects} & history.poison),
        duplicate_deliveries=sum(n - 1 for n in delivered.values()),
        unpublished=sorted(wanted - set(in_log)) if history.complete_log else [],
        duplicates_published=sum(n - 1 for n in in_log.values()),
    )
