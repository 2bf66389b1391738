"""RabbitMQ's management HTTP API: the few reads the operator tools need."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any


def management_get(management_url: str, path: str, timeout: float = 10.0) -> Any:
    """``GET path`` on the management API at ``management_url`` (credentials in its
    userinfo, ``guest`` when absent), decoded JSON. Blocking: call it in a thread.
    Raises ``OSError`` (``urllib.error.URLError``) when the API does not answer."""
    parts = urllib.parse.urlsplit(management_url)
    base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}"
    request = urllib.request.Request(base + path)
    token = base64.b64encode(
        f"{parts.username or 'guest'}:{parts.password or 'guest'}".encode()
    ).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


@dataclass(frozen=True)
class QueueDepth:
    """One queue's waiting work: ``ready`` (not yet delivered) and ``unacked``
    (delivered, not yet acknowledged), and how many consumers read it."""

    vhost: str
    queue: str
    ready: int
    unacked: int
    consumers: int


async def queue_depths(management_url: str) -> list[QueueDepth]:
    """Every queue's depth, sorted by vhost and name (the management API's counts,
    refreshed every few seconds by RabbitMQ, not to the message)."""
    rows = await asyncio.to_thread(
        management_get,
        management_url,
        "/api/queues?columns=vhost,name,messages_ready,messages_unacknowledged,consumers",
    )
    return sorted(
        (
            QueueDepth(
                str(q.get("vhost", "")),
                str(q.get("name", "")),
                int(q.get("messages_ready", 0) or 0),
                int(q.get("messages_unacknowledged", 0) or 0),
                int(q.get("consumers", 0) or 0),
            )
            for q in rows
        ),
        key=lambda d: (d.vhost, d.queue),
    )
