"""Who is calling an HTTP service: the connection's peer, unless a trusted proxy says.

Every relaybus HTTP service (the console, the shop's orders API and gateway) runs
under uvicorn, whose default believes ``X-Forwarded-For`` from loopback: any local
process (an SSH tunnel, a DNS-rebinding page) could then pick its own address per
request and slip past per-address limits. ``uvicorn_proxy_options`` turns that off
unless ``RELAYBUS_TRUSTED_PROXIES`` names proxies; ``limit_key`` is what per-address
limits count by.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

# Longest text limit_key returns ("ip6:" + a /64 network, or "other:" + 40 chars).
MAX_KEY = 50


def uvicorn_proxy_options(trusted_proxies: Sequence[str]) -> dict[str, Any]:
    """uvicorn.run keyword arguments: forwarded headers are read only from
    ``trusted_proxies`` (addresses or networks); with none, never."""
    if not trusted_proxies:
        return {"proxy_headers": False, "forwarded_allow_ips": ""}
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(trusted_proxies)}


def limit_key(host: str | None) -> str:
    """The bucket a per-address limit counts ``host`` in: an IPv4 address as it is,
    an IPv6 address by its /64 (one subscriber's usual allocation: rotating through
    it must not buy more attempts), anything else (a unix socket, garbage) by a
    bounded prefix. Never longer than ``MAX_KEY``."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "other:" + host[:40]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return "ip6:" + str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
