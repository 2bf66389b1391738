"""The stack's authenticated endpoints' material: a local CA, a server certificate for
127.0.0.1/localhost, and random credentials for Kafka (SCRAM-SHA-512) and RabbitMQ
(a user limited to its own vhost). Made once per stack folder, private to its owner.

Nothing here passes a secret on a command line: openssl reads no password (the keys
are unencrypted files in a 0700 folder), and the clients' settings are written to
``client.env`` (0600) for ``set -a; . .stack/secure/client.env; set +a``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from stack.errors import StackError
from stack.procs import private_dir
from stack.settings import StackSettings

KAFKA_USER = "relaybus"
RABBITMQ_USER = "relaybus"
RABBITMQ_VHOST = "relaybus"


@dataclass(frozen=True)
class Credentials:
    """Generated passwords of the stack's authenticated users."""

    kafka_password: str
    rabbitmq_password: str


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created 0600, not chmod'ed
    after: no moment where another user could open it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


class SecureMaterial:
    """Files under ``<data_dir>/secure``; ``ensure()`` makes whatever is missing."""

    def __init__(self, settings: StackSettings) -> None:
        self.s = settings
        self.home = settings.data_dir / "secure"
        self.ca_cert = self.home / "ca.pem"
        self.ca_key = self.home / "ca.key"
        self.server_cert = self.home / "server.crt"
        self.server_key = self.home / "server.key"
        # Kafka's PEM keystore: the private key and its certificate chain in one file.
        self.kafka_keystore = self.home / "kafka-keystore.pem"
        self.credentials_file = self.home / "credentials.json"
        self.client_env = self.home / "client.env"

    def ensure(self) -> Credentials:
        """Create the CA, the server certificate and the credentials if absent."""
        private_dir(self.home)
        if not (self.ca_cert.exists() and self.kafka_keystore.exists()):
            self._certificates()
        if not self.credentials_file.exists():
            write_private(
                self.credentials_file,
                json.dumps(
                    {
                        "kafka_password": secrets.token_urlsafe(24),
                        "rabbitmq_password": secrets.token_urlsafe(24),
                    }
                ),
            )
        credentials = self.credentials()
        write_private(self.client_env, self._client_env(credentials))
        return credentials

    def credentials(self) -> Credentials:
        data = json.loads(self.credentials_file.read_text())
        return Credentials(data["kafka_password"], data["rabbitmq_password"])

    def _openssl(self, *args: str) -> None:
        proc = subprocess.run(
            ["openssl", *args], capture_output=True, text=True, cwd=self.home, check=False
        )
        if proc.returncode != 0:
            raise StackError(f"openssl {args[0]} failed", proc.stderr[-2000:])

    def _certificates(self) -> None:
        days = "825"
        self._openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            "-keyout", str(self.ca_key), "-out", str(self.ca_cert),
            "-subj", "/CN=relaybus local stack CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        request = self.home / "server.csr"
        self._openssl(
            "req", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(self.server_key), "-out", str(request), "-subj", "/CN=localhost",
        )  # fmt: skip
        extensions = self.home / "server.ext"
        extensions.write_text(
            f"subjectAltName=IP:{self.s.host},DNS:localhost\n"
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
        )
        self._openssl(
            "x509", "-req", "-in", str(request), "-CA", str(self.ca_cert),
            "-CAkey", str(self.ca_key), "-CAcreateserial", "-days", days,
            "-out", str(self.server_cert), "-extfile", str(extensions),
        )  # fmt: skip
        request.unlink()
        write_private(
            self.kafka_keystore,
            self.server_key.read_text() + self.server_cert.read_text() + self.ca_cert.read_text(),
        )
        for key in (self.ca_key, self.server_key):
            key.chmod(0o600)

    def _client_env(self, c: Credentials) -> str:
        s = self.s
        lines = {
            "RELAYBUS_KAFKA_BOOTSTRAP": f"{s.host}:{s.kafka_secure_port}",
            "RELAYBUS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "RELAYBUS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "RELAYBUS_KAFKA_SASL_USERNAME": KAFKA_USER,
            "RELAYBUS_KAFKA_SASL_PASSWORD": c.kafka_password,
            "RELAYBUS_KAFKA_SSL_CAFILE": str(self.ca_cert),
            "RELAYBUS_RABBITMQ_URL": (
                f"amqps://{RABBITMQ_USER}:{c.rabbitmq_password}@{s.host}:{s.rabbitmq_tls_port}"
                f"/{RABBITMQ_VHOST}?cafile={self.ca_cert}"
            ),
            "RELAYBUS_RABBITMQ_MANAGEMENT_URL": (
                f"http://{RABBITMQ_USER}:{c.rabbitmq_password}@{s.host}:"
                f"{s.rabbitmq_management_port}"
            ),
        }
        header = "# relaybus clients on the stack's authenticated endpoints (secret: 0600)\n"
        return header + "".join(f"{name}='{value}'\n" for name, value in lines.items())
