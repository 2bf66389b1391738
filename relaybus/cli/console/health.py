"""Relay and worker health for the console, read from their Prometheus endpoints."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

# What the overview shows of each endpoint (histogram buckets and client internals
# are left to Prometheus).
SHOWN_PREFIXES = ("relaybus_",)
HIDDEN_SUFFIXES = ("_bucket", "_created")
MAX_BODY = 2 * 1024 * 1024  # a metrics page larger than this is not one of ours


@dataclass(frozen=True)
class Health:
    """One endpoint: ``up`` with its relaybus samples, or down and why."""

    name: str
    url: str
    up: bool
    error: str = ""
    samples: list[tuple[str, str]] = field(default_factory=list)  # (name{labels}, value)


async def read_health(endpoints: dict[str, str], timeout: float = 2.0) -> list[Health]:
    """Scrape every endpoint concurrently; one that does not answer in ``timeout``
    seconds (or answers with something else) is reported down, never raised."""
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        return list(
            await asyncio.gather(*(_one(client, n, u) for n, u in sorted(endpoints.items())))
        )


async def _one(client: httpx.AsyncClient, name: str, url: str) -> Health:
    try:
        response = await client.get(url)
    except httpx.HTTPError as err:
        return Health(name, url, False, f"{type(err).__name__}: {err}")
    if response.status_code != 200:
        return Health(name, url, False, f"HTTP {response.status_code}")
    if len(response.content) > MAX_BODY:
        return Health(name, url, False, "metrics page too large")
    try:
        families = list(text_string_to_metric_families(response.text))
    except ValueError as err:
        return Health(name, url, False, f"not a metrics page: {err}")
    samples = [
        (_label(s.name, s.labels), _number(s.value))
        for family in families
        for s in family.samples
        if s.name.startswith(SHOWN_PREFIXES) and not s.name.endswith(HIDDEN_SUFFIXES)
    ]
    return Health(name, url, True, samples=samples)


def _label(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"
