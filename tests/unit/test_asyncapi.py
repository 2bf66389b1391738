"""``relaybus asyncapi``: the generated document validates against the official AsyncAPI
3.0.0 JSON Schema (vendored from ``@asyncapi/specs``, see tests/schemas/README.md)
and says what the code says."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.consumers.app import ConsumerApp
from relaybus.consumers.asyncapi import StreamReader, StreamWriter, System, document, render
from relaybus.consumers.incoming import Incoming
from relaybus.consumers.policy import RetryPolicy
from relaybus.events import EventCatalog, event
from relaybus.settings import Route, Settings
from tests.support.cli import invoke as run_cli

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "asyncapi-3.0.0.json"


@cache
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    return jsonschema.Draft7Validator(schema)


def errors(doc: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator().iter_errors(doc)]


class Part(BaseModel):
    sku: str
    quantity: int


@event("parcel.sent", version=1, aggregate_type="parcel", key="parcel_id")
class ParcelSentV1(BaseModel):
    """A parcel left the depot."""

    parcel_id: str
    parts: list[Part]


@event("parcel.sent", version=2, aggregate_type="parcel", key="parcel_id")
class ParcelSent(BaseModel):
    """A parcel left the depot, by a carrier."""

    parcel_id: str
    parts: list[Part]
    carrier: str = "post"


def system() -> System:
    catalog = EventCatalog(ParcelSentV1, ParcelSent)
    catalog.upcaster("parcel.sent", from_version=1)(lambda v1: {**v1, "carrier": "post"})
    app = ConsumerApp("depot")

    @app.kafka("outbox.event.parcel", group="tracking", types=["parcel.sent"])
    async def track(message: Incoming, session: AsyncSession | None) -> None:
        """Record where the parcel is."""

    @app.rabbitmq(
        "billing",
        binding="parcel.*",
        types=["parcel.sent", "parcel.lost"],
        retry=RetryPolicy(max_attempts=3),
    )
    async def bill(message: Incoming, session: AsyncSession | None) -> None:
        """Bill the sender."""

    return System(
        "depot",
        "1.0.0",
        catalog,
        apps=[app],
        readers=[StreamReader("router", "outbox.event.parcel", "router", ("parcel.sent",))],
        writers=[StreamWriter("router", "depot.routes", ("parcel.sent",))],
    )


def settings() -> Settings:
    return Settings(
        routes=[Route(pattern="parcel.*", brokers=["kafka", "rabbitmq"])],
        rabbitmq_url="amqp://user:s3cret-pw@rabbit.example:5673/vhost",
    )


def test_the_document_validates_against_the_official_schema() -> None:
    doc = document(system(), settings())
    assert errors(doc) == []
    # Also once through YAML, the committed form.
    assert errors(yaml.safe_load(render(doc, "yaml"))) == []
    assert json.loads(render(doc, "json")) == doc
    # The validator does refuse: a broken copy fails.
    broken = {**doc, "operations": {"x": {"action": "publish", "channel": {}}}}
    assert errors(broken)


def test_the_document_says_what_the_code_says() -> None:
    doc = document(system(), settings())
    channels, operations = doc["channels"], doc["operations"]
    messages = doc["components"]["messages"]
    # Every version of the event class, its header constants, the upcaster list.
    assert set(messages) >= {"parcel.sent.v1", "parcel.sent.v2", "parcel.lost.untyped"}
    assert messages["parcel.sent.v2"]["headers"]["properties"]["schema_version"]["const"] == "2"
    assert messages["parcel.sent.v1"]["x-relaybus-upcasters"] == [1]
    assert doc["components"]["schemas"]["parcel.sent.v2"]["properties"]["carrier"]["default"] == (
        "post"
    )
    # The relay sends to both brokers of the route; handlers receive with group and DLQ.
    assert operations["relay.publish.outbox.event.parcel"]["action"] == "send"
    assert channels["amqp.relaybus.events.parcel.sent"]["address"] == "parcel.sent"
    track = operations["depot.track.receive"]
    assert track["bindings"]["kafka"]["groupId"]["enum"] == ["tracking"]
    assert track["x-relaybus"]["deadLetterChannel"] == {
        "$ref": "#/channels/kafka.outbox.event.parcel.dlq"
    }
    bill = operations["depot.bill.receive"]
    assert channels["amqp.queue.billing"]["bindings"]["amqp"]["is"] == "queue"
    assert [r["$ref"] for r in bill["x-relaybus"]["retryChannels"]] == [
        "#/channels/amqp.queue.billing.retry.1",
        "#/channels/amqp.queue.billing.retry.2",
    ]
    assert operations["router.send.depot.routes"]["action"] == "send"
    # Servers: host and port only, never credentials.
    assert doc["servers"]["rabbitmq"]["host"] == "rabbit.example:5673"
    assert "s3cret-pw" not in render(doc, "yaml")


def test_the_output_is_deterministic() -> None:
    assert render(document(system(), settings()), "yaml") == render(
        document(system(), settings()), "yaml"
    )


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="yaml or json"):
        render({}, "xml")


# --- the shop's committed document and the CLI -----------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


def test_the_committed_shop_document_matches_the_code_and_validates() -> None:
    from relaybus.shop.system import committed_document

    generated = committed_document()
    assert DOC.read_text() == generated, "docs/asyncapi.yaml is stale: run `make docs`"
    doc = yaml.safe_load(generated)
    assert errors(doc) == []
    created = doc["components"]["messages"]["order.created.v2"]
    assert created["x-relaybus-upcasters"] == [1]
    assert "currency" in doc["components"]["schemas"]["order.created.v2"]["required"]


def test_schema_check_passes_the_code_against_its_own_document() -> None:
    proc = run_cli("schema", "check", "--against", str(DOC))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 breaking" in proc.stdout


def test_schema_check_lists_a_breaking_change_and_exits_1(tmp_path: Path) -> None:
    doc = yaml.safe_load(DOC.read_text())
    schema = doc["components"]["schemas"]["order.created.v2"]
    schema["properties"]["amount_cents"] = {"type": "string"}  # type changed
    del schema["properties"]["customer"]  # field removed
    changed = tmp_path / "new.yaml"
    changed.write_text(yaml.safe_dump(doc))
    proc = run_cli("schema", "check", "--against", str(DOC), "--current", str(changed), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    breaking = {(c["where"], c["what"]) for c in report["changes"] if c["breaking"]}
    assert ("order.created v2: customer", "field removed") in breaking
    assert any(w == "order.created v2: amount_cents" for w, _ in breaking)


def test_asyncapi_cli_writes_json_and_refuses_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "doc.json"
    proc = run_cli("asyncapi", "--format", "json", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert errors(json.loads(out.read_text())) == []
    for args, says in (
        (("asyncapi", "--format", "xml"), "use yaml or json"),
        (("asyncapi", "--app", "no_such_module:app"), "cannot import 'no_such_module'"),
        (("asyncapi", "--app", "json:dumps"), "is not a System or a ConsumerApp"),
        (("schema", "check", "--against", str(tmp_path / "missing.yaml")), "cannot read"),
    ):
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert says in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("asyncapi: [unclosed")
    proc = run_cli("schema", "check", "--against", str(garbage))
    assert proc.returncode == 2
    assert "is not YAML" in proc.stderr
