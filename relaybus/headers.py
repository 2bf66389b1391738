"""Header names relaybus owns: the envelope it writes and the reserved ``x-…`` namespace.

The outbox refuses user headers with these names (the relay writes the envelope;
retry and dead-letter bookkeeping is written by workers only), and consumers never
let a reserved header from the wire steer anything on a first delivery
(``docs/architecture.md``, "Trust boundary").
"""

from __future__ import annotations

# Written by the relay on every message (docs/architecture.md, "Contracts").
ENVELOPE = frozenset(
    ("id", "type", "aggregatetype", "aggregateid", "occurred_at", "content-type", "schema_version")
)
# Optional envelope headers a writer may set through the outbox.
TRACING = ("traceparent", "correlation_id", "causation_id")

# Retry and dead-letter bookkeeping, written by workers.
ATTEMPTS = "x-attempts"
RETRY_AT = "x-retry-at"
CONSUMER = "x-consumer"
ORIGINAL_TOPIC = "x-original-topic"
ORIGINAL_PARTITION = "x-original-partition"
ORIGINAL_OFFSET = "x-original-offset"
DLQ_REASON = "x-dlq-reason"
EXCEPTION_TYPE = "x-exception-type"
EXCEPTION_MESSAGE = "x-exception-message"
STACKTRACE = "x-stacktrace"
FAILED_AT = "x-failed-at"
# Set by ``relaybus replay`` on every copy it writes: ``<topic>/<partition>/<offset>``
# of the original. A resumed copy finds what it already wrote by it; it steers nothing.
REPLAY_OF = "x-replay-of"
# Set on a stub dead letter whose body could not be copied (too large).
BODY_DROPPED = "x-dlq-body-dropped"
# RabbitMQ: set on relaybus's copy of a message that had no id. The AMQP client fills
# in a random ``message_id`` on every publish (it keys returned messages by it); this
# says that id is not the message's, so no consumer or replay ever takes it as one.
NO_ID = "x-relaybus-no-id"
DEAD_LETTER = (
    DLQ_REASON,
    EXCEPTION_TYPE,
    EXCEPTION_MESSAGE,
    STACKTRACE,
    ATTEMPTS,
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    CONSUMER,
    FAILED_AT,
)
RESERVED_NAMES = frozenset((*DEAD_LETTER, RETRY_AT, BODY_DROPPED))
# Prefixes of reserved names: relaybus's own, the DLQ family, and RabbitMQ's
# dead-lettering bookkeeping (x-death, x-first-death-*, x-last-death-*).
RESERVED_PREFIXES = (
    "x-relaybus-",
    "x-replay-",
    "x-dlq-",
    "x-original-",
    "x-exception-",
    "x-retry-",
    "x-death",
    "x-first-death",
    "x-last-death",
)


def is_reserved(name: str) -> bool:
    """True for a header name in relaybus's reserved ``x-…`` namespace (case-insensitive)."""
    if name[:1] not in ("x", "X"):  # every reserved name starts with "x-": the common case
        return False
    lowered = name.lower()
    return lowered in RESERVED_NAMES or lowered.startswith(RESERVED_PREFIXES)
