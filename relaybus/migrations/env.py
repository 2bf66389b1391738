"""Alembic environment of relaybus's own tables (version table relaybus_alembic_version)."""

from __future__ import annotations

import re
from typing import Any

# Importing the model modules registers their tables on Base.metadata.
import relaybus.audit
import relaybus.consumers.inbox
import relaybus.locks.postgres
import relaybus.outbox.models  # noqa: F401
from relaybus.db import alembic_env
from relaybus.db.base import Base

# The archive's day partitions (and their indexes, created by ATTACH) are made at run
# time by relaybus_archive_partitions (migration 0010), not by the models: Alembic
# compares only their parent, outbox_archive.
_ARCHIVE_PARTITION = re.compile(r"^outbox_archive_(\d{8}|default)(_\w+)?$")


def _include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    return not (reflected and name is not None and _ARCHIVE_PARTITION.match(name))


alembic_env.run(Base.metadata, _include_object)
