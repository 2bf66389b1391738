"""Points in time on the command line: ISO-8601 or an age like ``90s``, ``15m``, ``2h``, ``1d``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import typer

_AGE = re.compile(r"^(\d{1,9})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
HINT = "use ISO-8601 (2026-12-01T10:00:00Z) or an age such as 90s, 15m, 2h, 1d"


def parse_instant(text: str, now: datetime, option: str) -> datetime:
    """``text`` as an aware UTC datetime: an ISO-8601 time (one without a zone is
    UTC) or an age before ``now``. Raises ``typer.BadParameter`` naming ``option``
    and what to write instead."""
    match = _AGE.match(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text[:40]!r} is not a time: {HINT}", param_hint=option
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
