"""docs/events.md's worked example, run as written on the in-memory broker."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from relaybus.consumers.testing import TestBroker
from relaybus.message import Message

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def example(tmp_path: Path) -> ModuleType:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/events.md has one worked example"
    path = tmp_path / "events_doc_example.py"
    path.write_text(blocks[0])
    spec = importlib.util.spec_from_file_location("events_doc_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # annotations resolve against the module
    spec.loader.exec_module(module)
    return module


def sent(payload: bytes, version: str | None) -> Message:
    return Message(
        type="parcel.sent",
        aggregatetype="parcel",
        aggregateid="p1",
        payload=payload,
        **({"schema_version": version} if version is not None else {}),
    )


async def test_the_worked_example_reads_v1_and_v2_and_refuses_v3(tmp_path: Path) -> None:
    doc = example(tmp_path)
    try:
        async with TestBroker(doc.app) as broker:
            await broker.publish(
                sent(b'{"parcel_id": "p1", "grams": 300}', None),
                sent(b'{"parcel_id": "p2", "grams": 20, "carrier": "dhl"}', "2"),
                sent(b'{"parcel_id": "p3", "grams": 1, "carrier": "x", "drone": 1}', "3"),
            )
            await broker.idle()
            letters = broker.dead_letters("outbox.event.parcel")
        assert sorted((p.parcel_id, p.carrier) for p in doc.tracked) == [
            ("p1", "post"),
            ("p2", "dhl"),
        ]
        assert [letter.reason for letter in letters] == ["unknown-version"]
    finally:
        sys.modules.pop("events_doc_example", None)
