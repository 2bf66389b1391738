"""How a Kafka client reaches the cluster: bootstrap servers plus, on an authenticated
cluster, TLS and SASL (SCRAM) credentials. Every aiokafka client relaybus makes is
built from one of these, so a setting reaches the relay, workers, stream processors
and operator commands alike."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any, Literal

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@dataclass(frozen=True)
class KafkaConnection:
    """Bootstrap servers and the security to use on them.

    ``str()`` is the bootstrap list only, so it is what error messages show; the
    password is left out of ``repr()`` too (it never reaches a log line, a dead letter
    or ``--json`` output through this object).
    """

    bootstrap: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | None = None

    def __str__(self) -> str:
        return self.bootstrap

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin).

        TLS verifies the broker's certificate against ``cafile`` (the system's CAs
        when none is given) and its host name; SASL sends ``username``/``password``
        with ``sasl_mechanism``. A SASL protocol without credentials is refused
        here, before any connection is tried.
        """
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
        }
        if self.uses_tls:
            # The default context: certificate and host name checked, TLS 1.2+.
            options["ssl_context"] = ssl.create_default_context(cafile=self.cafile)
        if self.uses_sasl:
            if not self.username or not self.password:
                raise ValueError(
                    f"Kafka {self.security_protocol} needs a username and a password "
                    "(RELAYBUS_KAFKA_SASL_USERNAME, RELAYBUS_KAFKA_SASL_PASSWORD)"
                )
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.username
            options["sasl_plain_password"] = self.password
        return options


KafkaTarget = KafkaConnection | str
"""Where a Kafka helper connects: a :class:`KafkaConnection`, or a bare bootstrap list
(plaintext, for tests and tools on the local stack)."""


def kafka_client_options(target: KafkaTarget) -> dict[str, Any]:
    """aiokafka keyword arguments for ``target`` (see ``KafkaConnection.client_options``)."""
    connection = target if isinstance(target, KafkaConnection) else KafkaConnection(target)
    return connection.client_options()
