"""Consumer groups that are consuming: what a test waits for before producing when a
late consumer would change the outcome (the shop's saga deadline runs from the order)."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient

from relaybus.brokers.kafka_connection import KafkaTarget, kafka_client_options

# An assignment with no partition is 10 bytes (version, no topic, no user data).
_EMPTY_ASSIGNMENT = 10


async def settled_members(bootstrap: KafkaTarget, group: str) -> int | None:
    """How many members ``group`` has once it is Stable with a partition assigned to
    every member (listed members are not enough: until a rebalance ends the first
    member still holds every partition); None while it is not."""
    admin = AIOKafkaAdminClient(**kafka_client_options(bootstrap))
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    for response in described:
        for found in response.groups:
            state, members = found[2], found[5]
            if (
                found[1] == group
                and state == "Stable"
                and members
                and all(len(member[4]) > _EMPTY_ASSIGNMENT for member in members)
            ):
                return len(members)
    return None


async def all_consuming(bootstrap: KafkaTarget, groups: Iterable[str]) -> bool:
    """Every one of ``groups`` is Stable with partitions assigned to each member."""
    for group in groups:
        if await settled_members(bootstrap, group) is None:
            return False
    return True
