"""Who an HTTP caller is (issue 31 §3): forwarded headers only from configured proxies,
per-address limits keyed by a bounded key, IPv6 by its /64."""

from __future__ import annotations

import pytest

from relaybus.client_address import MAX_KEY, limit_key, uvicorn_proxy_options


def test_forwarded_headers_are_believed_from_nobody_by_default() -> None:
    assert uvicorn_proxy_options([]) == {"proxy_headers": False, "forwarded_allow_ips": ""}
    assert uvicorn_proxy_options(["10.0.0.5", "10.1.0.0/16"]) == {
        "proxy_headers": True,
        "forwarded_allow_ips": "10.0.0.5,10.1.0.0/16",
    }


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2::1", "ip6:2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "ip6:2001:db8:1:2::/64"),  # same /64
        ("::ffff:203.0.113.7", "203.0.113.7"),  # v4-mapped: the IPv4 address
        (None, "unknown"),
        ("", "unknown"),
    ],
)
def test_limit_keys(host: str | None, key: str) -> None:
    assert limit_key(host) == key


def test_a_rotating_ipv6_client_stays_in_one_bucket() -> None:
    keys = {limit_key(f"2001:db8:0:7:{n:x}::1") for n in range(1000)}
    assert keys == {"ip6:2001:db8:0:7::/64"}


def test_anything_else_is_a_bounded_key() -> None:
    for host in ("9" * 80, "unix:/tmp/sock", "<script>" * 50):
        key = limit_key(host)
        assert key.startswith("other:")
        assert len(key) <= MAX_KEY
