"""An AsyncAPI 3.0 document of a running configuration, generated from the code.

``document(system, settings)`` describes:

- **servers**: the Kafka bootstrap and RabbitMQ host the settings name (host and port
  only: no credentials, no URL parameters);
- **channels**: each Kafka topic (``outbox.event.<aggregate type>``, a handler's
  topic, its retry tiers and DLQ), RabbitMQ's routing keys on ``relaybus.events`` and
  each handler's queue with its tiers and DLQ;
- **operations**: what the relay sends, per event class with an aggregate type and per
  route (``RELAYBUS_ROUTES``); what each handler receives (its group, dedupe, retry
  tiers and dead-letter channel); what stream processors declared in ``System`` read
  and write;
- **messages and schemas**: every version of every event class of the catalog (its
  JSON Schema from pydantic), with the ``type`` and ``schema_version`` headers, its
  version as ``x-relaybus-version`` and the versions of its type that have an
  upcaster to the next as ``x-relaybus-upcasters`` (what ``relaybus schema check``
  reads to tell a retired version from a dropped one).

The output is deterministic (sorted, no timestamps) so a committed copy can be compared
with a fresh one byte for byte.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel

from relaybus.consumers.app import ConsumerApp, Handler, KafkaSource, RabbitSource
from relaybus.consumers.loading import TargetNotFound, load_target
from relaybus.consumers.naming import dlq_name, retry_name
from relaybus.events import EventCatalog, spec_of
from relaybus.settings import Settings

ASYNCAPI_VERSION = "3.0.0"
EXCHANGE = "relaybus.events"
KAFKA_BINDING = "0.5.0"
AMQP_BINDING = "0.3.0"
_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class StreamReader:
    """A reader that is not a ``ConsumerApp`` handler (a stream processor): it reads
    ``types`` from Kafka ``topic`` in consumer group ``group``."""

    name: str
    topic: str
    group: str
    types: tuple[str, ...]
    summary: str = ""


@dataclass(frozen=True)
class StreamWriter:
    """A writer that sends ``types`` to Kafka ``topic`` itself (not through the outbox)."""

    name: str
    topic: str
    types: tuple[str, ...]
    summary: str = ""


@dataclass
class System:
    """What one AsyncAPI document describes: the event classes, the consumer apps and
    the stream processors of a deployment. ``relaybus asyncapi --app module:attr``
    takes a ``System``, a ``ConsumerApp`` or a callable returning either."""

    title: str
    version: str
    events: EventCatalog
    apps: Sequence[ConsumerApp] = ()
    readers: Sequence[StreamReader] = ()
    writers: Sequence[StreamWriter] = ()
    description: str = ""


# Installed packages register their System here (``name = "module:attribute"``).
SYSTEMS_ENTRY_POINTS = "relaybus.systems"


class SystemNotFound(TargetNotFound):
    """``--app`` names nothing that describes a system."""


def _load_one(target: str) -> System:
    try:
        obj = load_target(target, (System, ConsumerApp), "a System or a ConsumerApp")
    except TargetNotFound as err:
        raise SystemNotFound(str(err)) from None
    if isinstance(obj, ConsumerApp):
        return System(obj.name, "0", obj.events, apps=[obj])
    assert isinstance(obj, System)
    return obj


def load_systems(targets: Sequence[str]) -> System:
    """The systems ``targets`` name (``module:attribute``), merged into one (apps,
    readers and writers listed together, catalogs combined). With no target, the one
    system installed packages register (``relaybus.systems`` entry points: the shop
    registers its own); with none or several registered, say so."""
    if not targets:
        points = sorted(entry_points(group=SYSTEMS_ENTRY_POINTS), key=lambda p: p.name)
        if len(points) != 1:
            names = ", ".join(f"{p.name} ({p.value})" for p in points) or "none"
            raise SystemNotFound(f"give --app module:attribute (systems registered: {names})")
        targets = [points[0].value]
    systems = [_load_one(target) for target in targets]
    if len(systems) == 1:
        return systems[0]
    catalog = EventCatalog()
    for system in systems:
        for name in system.events.types():
            catalog.extend(system.events.versions(name).values())
        catalog.merge_upcasters(system.events)
    first = systems[0]
    return System(
        first.title,
        first.version,
        catalog,
        apps=[app for system in systems for app in system.apps],
        readers=[reader for system in systems for reader in system.readers],
        writers=[writer for system in systems for writer in system.writers],
        description=first.description,
    )


def ident(text: str) -> str:
    """``text`` as an AsyncAPI component or channel id (``[A-Za-z0-9._-]``)."""
    return _ID_CHARS.sub("_", text)


def message_id(type_: str, version: int | None) -> str:
    """The id of a message: ``order.created.v2``; ``order.created.untyped`` for a type
    some handler accepts that has no event class."""
    return ident(f"{type_}.v{version}" if version is not None else f"{type_}.untyped")


@dataclass
class _Builder:
    system: System
    settings: Settings
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    servers_used: set[str] = field(default_factory=set)

    # messages -----------------------------------------------------------------
    def add_classes(self) -> None:
        catalog = self.system.events
        for name in catalog.types():
            upcasters = catalog.upcasters(name)
            for cls in catalog.versions(name).values():
                self._add_class(cls, upcasters)

    def _add_class(self, cls: type[BaseModel], upcasters: list[int]) -> None:
        spec = spec_of(cls)
        mid = message_id(spec.type, spec.version)
        schema = cls.model_json_schema(ref_template=f"#/components/schemas/{mid}.{{model}}")
        for def_name, definition in sorted(schema.pop("$defs", {}).items()):
            self.schemas[f"{mid}.{def_name}"] = definition
        self.schemas[mid] = schema
        message: dict[str, Any] = {
            "name": spec.type,
            "title": f"{cls.__name__} (v{spec.version})",
            "contentType": "application/json",
            "headers": _headers_schema(spec.type, str(spec.version)),
            "payload": {"$ref": f"#/components/schemas/{mid}"},
            "x-relaybus-version": spec.version,
        }
        if doc := (cls.__doc__ or "").strip():
            message["summary"] = doc.splitlines()[0][:300]
        if spec.key is not None:
            message["bindings"] = {
                "kafka": {
                    "key": {"type": "string", "description": f"the {spec.key} field"},
                    "bindingVersion": KAFKA_BINDING,
                }
            }
        if upcasters:
            message["x-relaybus-upcasters"] = upcasters
        self.messages[mid] = message

    def ids_for(self, types: Iterable[str] | None) -> list[str]:
        """Message ids of ``types`` (every version each); all typed messages for None."""
        if types is None:
            return sorted(
                message_id(spec_of(cls).type, spec_of(cls).version)
                for name in self.system.events.types()
                for cls in self.system.events.versions(name).values()
            )
        ids: list[str] = []
        for name in sorted(set(types)):
            versions = self.system.events.versions(name)
            if versions:
                ids.extend(message_id(name, version) for version in versions)
            else:
                mid = message_id(name, None)
                self.messages.setdefault(
                    mid,
                    {
                        "name": name,
                        "title": f"{name} (no event class)",
                        "contentType": "application/json",
                        "headers": _headers_schema(name, None),
                        "payload": {"type": "object"},
                    },
                )
                ids.append(mid)
        return ids

    # channels -------------------------------------------------------------------
    def channel(
        self,
        server: str,
        cid: str,
        address: str,
        ids: list[str],
        bindings: dict[str, Any],
        description: str = "",
    ) -> str:
        """Channel ``cid`` on ``server`` (made on first use), with ``ids`` among its
        messages; the first description given stays."""
        self.servers_used.add(server)
        cid = ident(cid)
        channel = self.channels.setdefault(
            cid,
            {
                "address": address,
                "servers": [{"$ref": f"#/servers/{server}"}],
                "messages": {},
                "bindings": bindings,
            },
        )
        if description and "description" not in channel:
            channel["description"] = description
        for mid in ids:
            channel["messages"][mid] = {"$ref": f"#/components/messages/{mid}"}
        return cid

    def kafka_channel(self, topic: str, ids: list[str], description: str = "") -> str:
        bindings = {"kafka": {"topic": topic, "bindingVersion": KAFKA_BINDING}}
        return self.channel("kafka", f"kafka.{topic}", topic, ids, bindings, description)

    def amqp_routing_key(self, type_: str, ids: list[str]) -> str:
        exchange = {"name": EXCHANGE, "type": "topic", "durable": True, "autoDelete": False}
        bindings = {
            "amqp": {
                "is": "routingKey",
                "exchange": {**exchange, "vhost": "/"},
                "bindingVersion": AMQP_BINDING,
            }
        }
        description = f"routing key {type_!r} on the topic exchange {EXCHANGE}"
        return self.channel(
            "rabbitmq", f"amqp.{EXCHANGE}.{type_}", type_, ids, bindings, description
        )

    def amqp_queue(self, queue: str, ids: list[str], description: str) -> str:
        declared = {"name": queue, "durable": True, "exclusive": False, "autoDelete": False}
        bindings = {
            "amqp": {
                "is": "queue",
                "queue": {**declared, "vhost": "/"},
                "bindingVersion": AMQP_BINDING,
            }
        }
        return self.channel("rabbitmq", f"amqp.queue.{queue}", queue, ids, bindings, description)

    # operations -----------------------------------------------------------------
    def operation(self, oid: str, action: str, cid: str, ids: list[str], **extra: Any) -> None:
        self.operations[ident(oid)] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{cid}"},
            "messages": [{"$ref": f"#/channels/{cid}/messages/{mid}"} for mid in ids],
            **extra,
        }

    def add_relay(self) -> None:
        """What the relay publishes: each event class with an aggregate type, to the
        brokers of the first route its type matches (``RELAYBUS_ROUTES``)."""
        by_topic: dict[str, list[str]] = {}
        by_key: dict[str, list[str]] = {}
        catalog = self.system.events
        for name in catalog.types():
            brokers = _brokers_for(name, self.settings)
            for version, cls in catalog.versions(name).items():
                spec = spec_of(cls)
                if spec.aggregate_type is None:
                    continue
                mid = message_id(name, version)
                if "kafka" in brokers:
                    topic = f"{self.settings.kafka_topic_prefix}{spec.aggregate_type}"
                    by_topic.setdefault(topic, []).append(mid)
                if "rabbitmq" in brokers:
                    by_key.setdefault(name, []).append(mid)
        for topic, ids in sorted(by_topic.items()):
            cid = self.kafka_channel(topic, ids, "written through the outbox; key = aggregate id")
            self.operation(
                f"relay.publish.{topic}",
                "send",
                cid,
                ids,
                summary="the outbox relay publishes committed outbox rows (at least once, "
                "per-key order)",
            )
        for type_, ids in sorted(by_key.items()):
            cid = self.amqp_routing_key(type_, ids)
            self.operation(
                f"relay.publish.amqp.{type_}",
                "send",
                cid,
                ids,
                summary="the outbox relay publishes committed outbox rows (publisher confirms)",
            )

    def add_handler(self, app: ConsumerApp, handler: Handler) -> None:
        ids = self.ids_for(handler.types)
        policy = {
            "handler": f"{app.name}.{handler.name}",
            "dedupe": handler.dedupe,
            "maxAttempts": handler.retry.max_attempts,
            "timeoutSeconds": handler.timeout,
        }
        source = handler.source
        if isinstance(source, KafkaSource):
            cid = self.kafka_channel(source.topic, ids)
            tiers = (
                []
                if source.ordered
                else [
                    self.kafka_channel(
                        retry_name(source.topic, tier), ids, f"retry tier {tier} of {source.topic}"
                    )
                    for tier in range(1, handler.retry.max_attempts)
                ]
            )
            dlq = self.kafka_channel(
                dlq_name(source.topic),
                ids,
                f"dead letters of {source.topic}, x-dlq-reason says why",
            )
            bindings: dict[str, Any] = {
                "kafka": {
                    "groupId": {"type": "string", "enum": [source.group]},
                    "bindingVersion": KAFKA_BINDING,
                }
            }
        else:
            assert isinstance(source, RabbitSource)
            cid = self.amqp_queue(source.queue, ids, f"bound to {EXCHANGE} with {source.binding!r}")
            tiers = [
                self.amqp_queue(
                    retry_name(source.queue, tier),
                    ids,
                    f"retry tier {tier} of {source.queue} (per-message TTL)",
                )
                for tier in range(1, handler.retry.max_attempts)
            ]
            dlq = self.amqp_queue(
                dlq_name(source.queue),
                ids,
                f"dead letters of {source.queue}, x-dlq-reason says why",
            )
            bindings = {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}}
        policy["retryChannels"] = [{"$ref": f"#/channels/{tier}"} for tier in tiers]
        policy["deadLetterChannel"] = {"$ref": f"#/channels/{dlq}"}
        self.operation(
            f"{app.name}.{handler.name}.receive",
            "receive",
            cid,
            ids,
            summary=(handler.func.__doc__ or "").strip().split("\n")[0][:300]
            or f"handler {handler.name}",
            bindings=bindings,
            **{"x-relaybus": policy},
        )

    def add_streams(self) -> None:
        for reader in self.system.readers:
            ids = self.ids_for(reader.types)
            cid = self.kafka_channel(reader.topic, ids)
            self.operation(
                f"{reader.name}.receive.{reader.topic}",
                "receive",
                cid,
                ids,
                summary=reader.summary or f"stream processor {reader.name}",
                bindings={
                    "kafka": {
                        "groupId": {"type": "string", "enum": [reader.group]},
                        "bindingVersion": KAFKA_BINDING,
                    }
                },
            )
        for writer in self.system.writers:
            ids = self.ids_for(writer.types)
            cid = self.kafka_channel(writer.topic, ids)
            self.operation(
                f"{writer.name}.send.{writer.topic}",
                "send",
                cid,
                ids,
                summary=writer.summary or f"stream processor {writer.name}",
            )

    def servers(self) -> dict[str, Any]:
        servers: dict[str, Any] = {}
        if "kafka" in self.servers_used:
            host = self.settings.kafka_bootstrap.split(",")[0].strip()
            servers["kafka"] = {
                "host": host,
                "protocol": "kafka",
                "description": "the Kafka bootstrap (RELAYBUS_KAFKA_BOOTSTRAP)",
            }
        if "rabbitmq" in self.servers_used:
            url = urlsplit(self.settings.rabbitmq)
            host = f"{url.hostname or 'localhost'}:{url.port or 5672}"
            servers["rabbitmq"] = {
                "host": host,
                "protocol": "amqp",
                "description": "RabbitMQ (RELAYBUS_RABBITMQ_URL, host only)",
            }
        return servers


def _headers_schema(type_: str, version: str | None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "id": {"type": "string", "format": "uuid", "description": "the message id (dedupe key)"},
        "type": {"type": "string", "const": type_},
        "aggregatetype": {"type": "string"},
        "aggregateid": {"type": "string"},
        "occurred_at": {"type": "string"},
        "traceparent": {"type": "string"},
    }
    if version is not None:
        properties["schema_version"] = {"type": "string", "const": version}
    return {"type": "object", "required": ["id", "type"], "properties": properties}


def _brokers_for(type_: str, settings: Settings) -> list[str]:
    for route in settings.routes:
        if fnmatchcase(type_, route.pattern):
            return list(route.brokers)
    return []


def document(system: System, settings: Settings) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``system`` as ``settings`` deploy it."""
    builder = _Builder(system, settings)
    builder.add_classes()
    builder.add_relay()
    for app in system.apps:
        for handler in app.handlers:
            builder.add_handler(app, handler)
    builder.add_streams()
    info: dict[str, Any] = {"title": system.title, "version": system.version}
    if system.description:
        info["description"] = system.description
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": info,
        "defaultContentType": "application/json",
        "servers": builder.servers(),
        "channels": dict(sorted(builder.channels.items())),
        "operations": dict(sorted(builder.operations.items())),
        "components": {
            "messages": dict(sorted(builder.messages.items())),
            "schemas": dict(sorted(builder.schemas.items())),
        },
    }


def render(doc: dict[str, Any], fmt: str) -> str:
    """``doc`` as ``yaml`` or ``json`` text (stable key order, trailing newline)."""
    if fmt == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return str(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100))
    raise ValueError(f"format must be yaml or json, not {fmt!r}")
