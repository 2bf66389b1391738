"""`relaybus relay-demo` writes through the outbox and reads both brokers back."""

from __future__ import annotations

import re

from tests.support.cli import run_cli


def test_demo_reports_every_event_on_both_brokers_in_key_order_and_applied_once() -> None:
    proc = run_cli("relay-demo", "--events", "120", "--keys", "6", timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "committed 120 events through the outbox over 6 keys" in out
    for broker in ("kafka", "rabbitmq"):
        row = re.search(rf"{broker}\s*│\s*(\d+)\s*│\s*(\d+)\s*│\s*(\w+)", out)
        assert row is not None, out
        received, unique, order = row.groups()
        assert int(unique) == 120
        assert int(received) >= 120
        assert order == "kept"
    consumed = re.search(
        r"(\d+) applied; every event delivered again: (\d+) duplicates skipped; "
        r"at most (\d+) effect per message",
        " ".join(out.split()),
    )
    assert consumed is not None, out
    assert consumed.groups() == ("120", "120", "1")
